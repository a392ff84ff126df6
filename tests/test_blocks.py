"""YOLOv8 blocks with DCNv3 and their registration with stock ultralytics."""
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import C2f, C3k, C3k2
from ultralytics.nn.tasks import DetectionModel

from dcnv3 import dcnv3_modules
from dcnv3.blocks import C2f_DCNv3, DCNV3_YoLo
from dcnv3.yolo import model_yaml
from dcnv3.blocks import Bottleneck_DCNv3, C3k2_DCNv3, C3k_DCNv3, auto_group


def layer_output_channels(model: DetectionModel, size: int = 64) -> list[tuple]:
    """Output shape of every top-level layer for a (1, 3, size, size) input."""
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)
                                                                       if torch.is_tensor(out) else None))
             for m in model.model]
    model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("scale", "nsmlx")
def test_every_scale_builds_like_its_stock_twin(scale, report):
    ours = YOLO(f"dcnv3-yolov8{scale}.yaml").model
    stock = YOLO(f"yolov8{scale}.yaml").model
    # ultralytics' width/depth scaling and repeats apply to the DCNv3 blocks exactly as to C2f.
    assert layer_output_channels(ours) == layer_output_channels(stock)
    for index in (4, 6, 8):
        assert type(ours.model[index]) is C2f_DCNv3
        assert len(ours.model[index].m) == len(stock.model[index].m)
    layers = dcnv3_modules(ours)
    assert layers and all(module.group >= 2 for _, module in layers)
    assert all(module.channels // module.group <= 16 for _, module in layers)
    params, stock_params = (sum(p.numel() for p in m.parameters()) for m in (ours, stock))
    report(f"dcnv3-yolov8{scale}: {params:,} parameters ({len(layers)} DCNv3 layers, groups "
           f"{sorted({m.group for _, m in layers})}); yolov8{scale}: {stock_params:,}")


def test_neck_variant_adds_dcnv3_to_the_neck():
    model = YOLO("dcnv3-neck-yolov8n.yaml").model
    names = [name for name, _ in dcnv3_modules(model)]
    assert {name.split(".")[1] for name in names} == {"4", "6", "8", "15", "18", "21"}
    assert layer_output_channels(model) == layer_output_channels(YOLO("yolov8n.yaml").model)


def test_model_yaml_helper_names_shipped_files():
    assert model_yaml("s") == "dcnv3-yolov8s.yaml"
    assert YOLO(model_yaml("n", neck=True)).model.yaml["scale"] == "n"
    with pytest.raises(ValueError):
        model_yaml("q")


def test_fork_yaml_names_build():
    """Forks name the blocks C2f_DCNV3 / DCNV3_YoLo in their YAMLs (pickled in checkpoints);
    ultralytics rebuilds from that YAML when fine-tuning."""
    cfg = YOLO("dcnv3-yolov8n.yaml").model.yaml
    cfg = {**cfg, "backbone": [[f, n, {"C2f_DCNv3": "C2f_DCNV3"}.get(m, m), [a[0], a[1], 1] if m == "C2f_DCNv3" else a]
                               for f, n, m, a in cfg["backbone"]]}
    model = DetectionModel(cfg, verbose=False)
    assert all(module.group == 1 for _, module in dcnv3_modules(model))
    assert len(dcnv3_modules(model)) == 5


def test_blocks_equal_their_twins_only_while_parsing():
    from ultralytics.nn.modules.conv import Conv

    from dcnv3.blocks import parsed_as_stock_twins

    assert C2f_DCNv3 != C2f and C2f != C2f_DCNv3
    assert len({C2f: 1, C2f_DCNv3: 2}) == 2
    with parsed_as_stock_twins():  # what parse_model's `m in base_modules` sees
        assert C2f_DCNv3 in frozenset({C2f}) and DCNV3_YoLo in frozenset({Conv})
    assert C2f_DCNv3 not in frozenset({C2f})
    assert issubclass(C2f_DCNv3, C2f) and type(C2f_DCNv3(16, 16)) is not C2f


def test_dcnv3_yolo_block_defaults_to_k3_with_autopad():
    block = DCNV3_YoLo(16, 32)
    assert block.dcnv3.kernel_size == 3 and block.dcnv3.pad == 1 and block.dcnv3.group == 1
    x = torch.randn(2, 16, 12, 10)
    assert block(x).shape == (2, 32, 12, 10)
    dilated = DCNV3_YoLo(16, 32, k=3, d=2, g=0)
    assert dilated.dcnv3.pad == 2 and dilated.dcnv3.group == 2
    assert dilated(x).shape == (2, 32, 12, 10)


def test_stemless_block_runs_without_conv():
    """One fork drops the 1x1 stem when in == out channels: such pickles have no `conv`."""
    block = DCNV3_YoLo(16, 16).eval()
    x = torch.randn(1, 16, 8, 8)
    expected = block.act(block.bn(block.dcnv3(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)))
    del block.conv
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("channels,expected", [(32, 2), (64, 4), (128, 8), (48, 3), (40, 2), (24, 2)])
def test_auto_group(channels, expected):
    assert auto_group(channels) == expected


def test_fuse_folds_the_dcnv3_batchnorm_into_output_proj():
    """ultralytics' fuse() (as predict and the probe call it) also folds each DCNV3_YoLo's
    BatchNorm into the DCNv3's output_proj: same outputs, no BatchNorm left in the block."""
    torch.manual_seed(0)
    model = DetectionModel("dcnv3-yolov8n.yaml", verbose=False)
    for module in model.modules():  # non-trivial statistics and non-zero offsets/masks
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    for _, layer in dcnv3_modules(model):
        torch.nn.init.normal_(layer.offset.weight, std=0.05)
        torch.nn.init.normal_(layer.mask.weight, std=0.2)
    model.eval()
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        expected = model(x)[0]
        model.fuse(verbose=False)
        fused = model(x)[0]
    blocks = [m for m in model.modules() if isinstance(m, DCNV3_YoLo)]
    assert blocks and all(not hasattr(b, "bn") for b in blocks)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-3)
