"""A DCNv3 module exports to ONNX (opset >= 16) and onnxruntime reproduces PyTorch."""

import numpy as np
import pytest
import torch

from dcnv3 import DCNv3

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize(
    "config",
    [
        dict(channels=32, group=2),
        dict(channels=24, group=3, kernel_size=5, pad=2, remove_center=True),
        dict(channels=16, group=2, stride=2, center_feature_scale=True),
    ],
)
def test_onnx_export_matches_pytorch(tmp_path, config):
    torch.manual_seed(0)
    module = DCNv3(**config).eval()
    with torch.no_grad():  # move the heads off their zero init so offsets matter
        module.offset.weight.normal_(0, 0.3)
        module.offset.bias.normal_(0, 2.0)
        module.mask.weight.normal_(0, 0.3)
    x = torch.randn(2, 13, 11, config["channels"])
    with torch.no_grad():
        expected = module(x).numpy()
    path = tmp_path / "dcnv3.onnx"
    torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"x": x.numpy()})
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
