"""YOLOv8 and YOLO11 blocks with DCNv3 and their registration with stock ultralytics."""

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules.block import C2f, C3k, C3k2
from ultralytics.nn.tasks import DetectionModel

from dcnv3 import dcnv3_modules
from dcnv3.yolo import model_yaml
from dcnv3.yolo.blocks.dcnv3 import Bottleneck_DCNv3, C2f_DCNv3, C3k2_DCNv3, C3k_DCNv3, DCNV3_YoLo, auto_group


def layer_output_channels(model: DetectionModel, size: int = 64) -> list[tuple]:
    """Output shape of every top-level layer for a (1, 3, size, size) input."""
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape) if torch.is_tensor(out) else None))
        for m in model.model
    ]
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
    report(
        f"dcnv3-yolov8{scale}: {params:,} parameters ({len(layers)} DCNv3 layers, groups "
        f"{sorted({m.group for _, m in layers})}); yolov8{scale}: {stock_params:,}"
    )


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
    cfg = {
        **cfg,
        "backbone": [
            [f, n, {"C2f_DCNv3": "C2f_DCNV3"}.get(m, m), [a[0], a[1], 1] if m == "C2f_DCNv3" else a]
            for f, n, m, a in cfg["backbone"]
        ],
    }
    model = DetectionModel(cfg, verbose=False)
    assert all(module.group == 1 for _, module in dcnv3_modules(model))
    assert len(dcnv3_modules(model)) == 5


def test_blocks_equal_their_twins_only_while_parsing():
    from ultralytics.nn.modules.conv import Conv

    from dcnv3.yolo.blocks.dcnv3 import parsed_as_stock_twins

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


# YOLO11 / YOLO26 blocks: the forks' C3k2_DCNv3 / C3k_DCNv3 over Bottleneck_DCNv3.


def shapes_by_name(module: torch.nn.Module) -> dict:
    return {name: tuple(p.shape) for name, p in module.state_dict().items()}


@pytest.mark.parametrize("c3k", [False, True])
def test_c3k2_dcnv3_is_stock_c3k2_with_dcnv3_in_place_of_the_second_convs(c3k):
    """Every tensor of stock C3k2 outside the replaced convolutions is in ours under the same
    name and shape (so the forks' pickles and ours share one layout), and the DCNv3 blocks sit
    where stock has the bottlenecks' cv2: with their 1x1 stem in C3k2's bottlenecks (c/2 -> c),
    without it in C3k's (c/2 -> c/2), as the extra_modules family builds them."""
    ours = C3k2_DCNv3(64, 128, n=2, c3k=c3k, e=0.5, g=0)
    stock = C3k2(64, 128, n=2, c3k=c3k, e=0.5)
    ours_shapes, stock_shapes = shapes_by_name(ours), shapes_by_name(stock)
    inner = "m.{i}.m.{j}.cv2." if c3k else "m.{i}.cv2."
    replaced = [inner.format(i=i, j=j) for i in range(2) for j in range(2)]
    kept = {k: v for k, v in stock_shapes.items() if not any(k.startswith(r) for r in replaced)}
    assert kept and all(ours_shapes[k] == v for k, v in kept.items())
    assert ours.c == 64 and ours.cv1.conv.out_channels == 128 and ours.cv2.conv.in_channels == 4 * 64
    for i in range(2):
        if c3k:
            block = ours.m[i]
            assert type(block) is C3k_DCNv3 and isinstance(block, C3k) and len(block.m) == 2
            assert all(not hasattr(b.cv2, "conv") and b.cv2.dcnv3.channels == 32 for b in block.m)
            assert all(b.add for b in block.m)  # shortcut passed on, c_ in == c_ out
        else:
            block = ours.m[i]
            assert type(block) is Bottleneck_DCNv3 and block.add
            assert block.cv1.conv.out_channels == 32 and block.cv2.conv.conv.in_channels == 32
            assert block.cv2.dcnv3.channels == 64
    groups = {m.group for _, m in dcnv3_modules(ours)}
    assert groups == {auto_group(32 if c3k else 64)}
    assert {m.group for _, m in dcnv3_modules(C3k2_DCNv3(64, 128, 1, c3k))} == {1}  # the forks' default


def test_c3k2_dcnv3_forward_is_the_csp_composition_of_its_children():
    """C3k2_DCNv3 computes C2f's split-and-concatenate over its children, C3k_DCNv3 C3's two
    branches, each bottleneck x + cv2(cv1(x)); forward_split (used for export) agrees."""
    torch.manual_seed(0)
    block = C3k2_DCNv3(24, 48, n=2, c3k=True, g=0).eval()
    for _, layer in dcnv3_modules(block):  # non-zero offsets and masks
        torch.nn.init.normal_(layer.offset.weight, std=0.1)
        torch.nn.init.normal_(layer.mask.weight, std=0.3)
    x = torch.randn(2, 24, 14, 10)

    def bottleneck(b, t):
        return t + b.cv2(b.cv1(t))

    def c3k_block(c, t):
        inner = c.cv1(t)
        for b in c.m:
            inner = bottleneck(b, inner)
        return c.cv3(torch.cat((inner, c.cv2(t)), 1))

    with torch.no_grad():
        first, second = block.cv1(x).chunk(2, 1)
        outputs = [first, second]
        for c in block.m:
            outputs.append(c3k_block(c, outputs[-1]))
        expected = block.cv2(torch.cat(outputs, 1))
        torch.testing.assert_close(block(x), expected)
        torch.testing.assert_close(block.forward_split(x), expected)
    assert expected.shape == (2, 48, 14, 10)


def test_yolo11_blocks_equal_their_twins_only_while_parsing():
    from dcnv3.yolo.blocks.dcnv3 import parsed_as_stock_twins

    assert C3k2_DCNv3 != C3k2 and len({C3k2: 1, C3k2_DCNv3: 2}) == 2
    with parsed_as_stock_twins():
        assert C3k2_DCNv3 in frozenset({C3k2}) and C3k_DCNv3 == C3k
    assert C3k2_DCNv3 not in frozenset({C3k2})
    assert issubclass(C3k2_DCNv3, C2f) and issubclass(C3k_DCNv3, C3k)


def test_fork_spellings_name_the_yolo11_blocks():
    from dcnv3.yolo.blocks.dcnv3 import BLOCK_ALIASES

    assert BLOCK_ALIASES["C3k2_DCNv3"] is BLOCK_ALIASES["C3k2_DCNV3"] is C3k2_DCNv3
    assert BLOCK_ALIASES["C3k_DCNv3"] is BLOCK_ALIASES["C3k_DCNV3"] is C3k_DCNv3
    assert BLOCK_ALIASES["Bottleneck_DCNV3"] is Bottleneck_DCNv3


def test_stemless_dcnv3_block_needs_equal_channels():
    assert not hasattr(DCNV3_YoLo(16, 16, stem=False), "conv")
    with pytest.raises(ValueError, match="inc == ouc"):
        DCNV3_YoLo(8, 16, stem=False)


def test_stock_scale_rules_give_the_c3k2_twins_c3k_at_m_l_x():
    """parse_model sets c3k=True for `m is C3k2` at m/l/x; the rewrite does it for the twins'
    lines only, as the YAML's second argument, without touching the input."""
    from dcnv3.yolo.blocks.dcnv3 import with_stock_scale_rules

    cfg = {
        "scales": {"n": [0.5, 0.25, 1024], "m": [0.5, 1.0, 512]},
        "backbone": [
            [-1, 2, "C3k2", [256, False, 0.25]],
            [-1, 2, "C3k2_DCNv3", [512, False, 0.25, 0]],
            [-1, 2, "C3k2_DCNV3", [1024]],
            [-1, 1, "Conv", [64, 3, 2]],
        ],
        "head": [[-1, 2, "C3k2_DCNv3", [512, True, 0.5, 0]]],
    }
    assert with_stock_scale_rules({**cfg, "scale": "n"})["backbone"] == cfg["backbone"]
    assert with_stock_scale_rules(cfg) is cfg  # no scale: parse_model takes the first, n
    for scale in "mlx":
        rewritten = with_stock_scale_rules({**cfg, "scale": scale})
        assert [line[3] for line in rewritten["backbone"]] == [
            [256, False, 0.25],
            [512, True, 0.25, 0],
            [1024, True],
            [64, 3, 2],
        ]
        assert rewritten["head"][0][3] == [512, True, 0.5, 0]
    assert cfg["backbone"][1][3] == [512, False, 0.25, 0] and cfg["backbone"][2][3] == [1024]
