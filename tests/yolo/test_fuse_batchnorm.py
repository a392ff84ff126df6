"""ultralytics' ``fuse()`` (predict, val and the probe call it) folds every deformable block's
BatchNorm too: DCNV3_YoLo's and DCNV4_YOLO's into the operator's ``output_proj``, DCNv2's into
the deformable convolution's weight and bias (``fuse_batchnorm``). Same outputs, no BatchNorm
left in those blocks.

Compared in float64: the fold is exact algebra, so in float64 the only difference is rounding
(~1e-12 relative). In float32 these randomly initialised detectors amplify rounding by orders of
magnitude (the DCNv4 fork fixture differs from its own float64 run by 0.85 px, and by 0.55 px
under ultralytics' stock Conv+BN fusion alone), which would hide a wrong fold.
"""

import copy

import pytest
import torch
from repo_paths import DATA
from ultralytics.nn.tasks import DetectionModel

from dcnv3.ops.capture import deformable_modules
from dcnv3.yolo import model_yaml
from dcnv3.yolo.blocks.dcnv2 import DCNv2
from dcnv3.yolo.blocks.dcnv3 import DCNV3_YoLo
from dcnv3.yolo.blocks.dcnv4 import DCNV4_YOLO
from dcnv3.yolo.loading import load_model

BLOCKS = (DCNV3_YoLo, DCNv2, DCNV4_YOLO)
FORKS = DATA / "forks"
FIXTURES = [
    FORKS / "dcnv2" / f"{layout}_best.pt"
    for layout in ("extra_dcnv2_v8", "extra_dcnv2_dynamic_v8", "extra_dcnv2_v11", "extra_dcnv2_dynamic_v11")
] + [FORKS / "extra_v11_dcnv4" / "extra_v11_dcnv4_best.pt"]
TOLERANCE = 1e-7  # float64: rounding only (outputs reach ~500 px), far below any real fold error


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and non-zero offsets and weights (an untrained YAML's
    heads start at zero, where a wrong fold of the sampling could go unseen)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_((torch.rand(module.num_features, generator=generator) - 0.5) * 0.4)
        for _, layer in deformable_modules(model):
            for parameter in layer.sampling_head_parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def fused_and_reference(network: torch.nn.Module, x: torch.Tensor):
    """(fused network, its output, the unfused network's output), all float64 in eval mode."""
    network = copy.deepcopy(network).double().eval()
    with torch.no_grad():
        expected = network(x)[0]
        network.fuse(verbose=False)
        fused = network(x)[0]
    return network, fused, expected


def assert_folded(network: torch.nn.Module) -> int:
    blocks = [module for module in network.modules() if isinstance(module, BLOCKS)]
    assert blocks and all(getattr(block, "bn", None) is None for block in blocks)
    return len(blocks)


@pytest.mark.parametrize(
    "operator,family", [("dcnv2", "yolov8"), ("dcnv2", "yolo11"), ("dcnv4", "yolov8"), ("dcnv4", "yolo11")]
)
def test_fuse_folds_each_operators_batchnorm(operator, family):
    model = randomise(DetectionModel(model_yaml("n", family=family, operator=operator), verbose=False))
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    network, fused, expected = fused_and_reference(model, x)
    assert assert_folded(network) >= 4
    assert float((fused - expected).abs().max()) < TOLERANCE * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fuse_keeps_the_fork_fixtures_outputs(path):
    network = load_model(path).model
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    network, fused, expected = fused_and_reference(network, x)
    assert_folded(network)
    assert float((fused - expected).abs().max()) < TOLERANCE * max(1.0, float(expected.abs().max()))


def test_dcnv4_block_without_output_bias_gets_one():
    """DCNv4(output_bias=False): the folded BN's shift needs a bias, so the projection gets one."""
    block = randomise(DCNV4_YOLO(16, 16, k=3, g=2)).double().eval()
    block.dcnv4.output_proj = torch.nn.Linear(16, 16, bias=False).double()
    x = torch.rand(2, 16, 9, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        block.fuse_batchnorm()
        fused = block(x)
    assert getattr(block, "bn", None) is None and block.dcnv4.output_proj.bias is not None
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
