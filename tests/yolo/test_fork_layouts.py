"""Community-fork checkpoint layouts load by what their modules hold and compute what the forks did.

The fixtures (tests/data/forks, built by tests/forks/make_fork_fixtures.py from the forks' own
code, see the README there) are loaded in a clean interpreter in which no fork code exists, as
best.pt and as last.pt, and must reproduce the forks' recorded forward within the bounds shared by
every fork fixture test. Why these bounds:

- boxes (pred rows 0-3, pixels): 0.1 px. fp32 summation order alone (another CPU's convolution
  kernels, another formulation of the DCNv3 sum) moves them by up to ~0.03 px; a wrong reading
  (offsets zeroed or swapped, a missing layer, the wrong activation) by tens to hundreds of px.
- class scores (rows 4+, in [0, 1]): 1e-3 (measured: ~1e-4).
- offsets and mask logits: 2e-3 + 2e-3 |x| elementwise.
"""

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from fakes import FOO_MODULE, unknown_fork_checkpoint
from repo_paths import ROOT
from torch import nn

FORKS = ROOT / "tests" / "data" / "forks"
LAYOUTS = ("jiangjh_v8", "extra_v8", "extra_v11")
BOX_PX, SCORE, LAYER_ABS, LAYER_REL = 0.1, 1e-3, 2e-3, 2e-3


def run_python(code: str) -> str:
    """Run code in a fresh interpreter (no fork code, nothing imported yet); return stdout."""
    env = {**os.environ, "YOLO_OFFLINE": "true"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_every_layout_reproduces_its_fork_as_best_and_last_in_a_clean_process():
    out = run_python(f"""
        import sys, cv2, torch
        import dcnv3
        from dcnv3.yolo.loading import load_model
        from dcnv3.analysis.probe import probe
        from ultralytics.data.augment import LetterBox

        image = cv2.imread({str(ROOT / "assets" / "examples" / "bus.jpg")!r})
        x = torch.from_numpy(LetterBox((640, 640), auto=True, stride=32)(image=image)[..., ::-1].copy())
        x = x.permute(2, 0, 1)[None].float() / 255

        def excess(actual, reference, absolute, relative):  # largest |diff| / bound (<= 1 passes), |diff|
            assert actual.shape == reference.shape, (actual.shape, reference.shape)
            diff = (actual - reference).abs()
            return (diff / (absolute + relative * reference.abs())).max().item(), diff.max().item()

        for layout in {LAYOUTS!r}:
            expected = torch.load(f"{FORKS}/{{layout}}_expected.pt", weights_only=True)
            assert list(x.shape) == expected["input_shape"]
            assert abs(x.double().sum().item() - expected["input_sum"]) < 1e-3
            for kind in ("best", "last"):
                model = load_model(f"{FORKS}/{{layout}}_{{kind}}.pt")
                assert sorted(model.deformable_layers) == sorted({{k.rsplit(".", 1)[0] for k in expected["layers"]}})
                # grid_sample: the reference's own formulation (best.pt only: last.pt holds the same network)
                for formulation in ("native", "grid_sample") if kind == "best" else ("native",):
                    dcnv3.set_default_formulation(formulation)
                    with dcnv3.capture(model.model) as layers, torch.no_grad():
                        pred = model.model(x)[0]
                    ref = expected["pred"]
                    boxes = (pred[:, :4] - ref[:, :4]).abs().max().item()
                    scores = (pred[:, 4:] - ref[:, 4:]).abs().max().item()
                    assert boxes <= {BOX_PX} and scores <= {SCORE}, (layout, kind, formulation, boxes, scores)
                    ratio, diff = max(excess(getattr(record, field), expected["layers"][name + key],
                                             {LAYER_ABS}, {LAYER_REL})
                                      for name, record in layers.items()
                                      for field, key in (("offset_raw", ".offset"), ("mask_logits", ".mask_logits")))
                    assert ratio <= 1, (layout, kind, formulation, ratio)
                    print(f"{{layout}} {{kind}} {{formulation}}: boxes {{boxes:.2g}} px, scores {{scores:.2g}}, "
                          f"offsets / mask logits {{diff:.2g}} ({{ratio:.2g}} of the bound)")
                dcnv3.set_default_formulation("native")
            # The probe (the app's path: letterbox, inference copy, NMS) lists every layer with the
            # fork's offsets.
            result = probe(model, {str(ROOT / "assets" / "examples" / "bus.jpg")!r}, imgsz=640)
            assert [layer.name for layer in result.layers] == model.deformable_layers
            for layer in result.layers:
                reference = expected["layers"][layer.name + ".offset"][0].reshape(layer.offsets.shape)
                offsets = torch.from_numpy(layer.offsets).float()
                assert excess(offsets, reference, {LAYER_ABS}, {LAYER_REL})[0] <= 1, layer.name
            forks = [name for name in sys.modules if "ops_dcnv3" in name or "extra_modules" in name]
            assert not forks, forks
            print(layout, "probe", len(result.layers), "layers")
    """)
    print(out)
    assert out.count("probe 5 layers") == len(LAYOUTS)


# ---------------------------------------------------------------------------------------------
# An unknown deformable layout: a C3k2-shaped container whose bottleneck holds a `FooConv`.
# ---------------------------------------------------------------------------------------------


def test_unknown_deformable_class_is_refused_saying_what_it_holds(tmp_path):
    path = tmp_path / "foo_best.pt"
    channels = unknown_fork_checkpoint(path)
    out = run_python(f"""
        import sys
        from dcnv3.yolo.checkpoints import CheckpointError
        from dcnv3.yolo.loading import load_model
        try:
            load_model({str(path)!r})
        except CheckpointError as error:
            print("REFUSED", error)
        assert {FOO_MODULE!r} not in sys.modules  # looked up, never imported
    """)
    message = out.split("REFUSED ", 1)[1]
    assert "\n" not in message.strip()  # one line, as the app shows it
    assert message.startswith("foo_best.pt: ")
    for needed in (
        "`C3k2_Foo`",
        "a C3k2-shaped container (cv1, cv2, m) with an unknown `Bottleneck_Foo` child",
        "`Bottleneck_Foo`",
        "a Bottleneck-shaped block (cv1, cv2) with an unknown `FooConv` child",
        "`FooConv`",
        "offset_conv (Conv2d)",
        f"weight ({channels}, {channels}, 3, 3)",
        "InternImage's DCNv3",
        "docs/checkpoints.md, 'Checkpoint layouts that load'",
        "nothing from the file was run",
    ):
        assert needed in message, (needed, message)


def test_dcnv3_conv_dw_runs_the_channels_first_branch():
    """DCNv3ConvDW computes DCNv3 with the extra_modules family's Conv depthwise branch: the same
    as a DCNv3 whose dw_conv is that Conv followed by a permute to channels-last."""
    from ultralytics.nn.modules.conv import Conv

    from dcnv3.ops.dcnv3 import DCNv3, DCNv3ConvDW, to_channels_last

    torch.manual_seed(0)
    conv = Conv(32, 32, 3, g=32).eval()
    ours = DCNv3ConvDW(32, 3, group=2, dw_conv=conv).eval()
    nn.init.normal_(ours.offset.weight, std=0.3)
    nn.init.normal_(ours.mask.weight, std=0.3)
    twin = DCNv3(32, 3, group=2).eval()
    twin.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("dw_conv")}, strict=False)
    twin.dw_conv = nn.Sequential(conv, to_channels_last())
    x = torch.randn(1, 12, 10, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), twin(x))
    assert set(ours.state_dict()) >= {"dw_conv.conv.weight", "dw_conv.bn.running_var", "offset.weight"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fields_health_and_receptive_field_work_on_every_layout(layout):
    """The app's Fields, Health and Receptive field views, through the functions they call."""
    import cv2
    import numpy as np

    from dcnv3.analysis.probe import probe
    from dcnv3.analysis.receptive_field import receptive_field
    from dcnv3.yolo.loading import load_model
    from viz_app.views import render
    from viz_app.views.health import health_rows

    bus = str(ROOT / "assets" / "examples" / "bus.jpg")
    model = load_model(FORKS / f"{layout}_best.pt")
    result = probe(model, bus, imgsz=320)
    assert [layer.name for layer in result.layers] == model.deformable_layers and len(result.layers) == 5
    for layer in result.layers:
        for field in render.FIELDS:
            values = render.field_values(result, layer, field)
            assert values.shape[:2] == tuple(layer.grid) and np.isfinite(values).all(), (layer.name, field)
    picture, _ = render.field_overlay(cv2.imread(bus), result, result.layers[0], "effective dilation")
    assert picture.ndim == 3 and picture.std() > 0
    rows = health_rows(result)
    assert [row["layer"] for row in rows] == model.deformable_layers
    # The fixtures' offsets are far from their zero init: no layer reads as collapsed to the grid.
    assert all(row["|offset| cells"] > 0.05 for row in rows), rows
    deepest = result.layers[-1]
    field = receptive_field(model, bus, layer=deepest.name, xy=(405.5, 540.5), imgsz=320)
    assert np.isfinite(field.heatmap).all() and field.heatmap.sum() > 0
    assert 0 < field.area(0.5) < field.area(0.9)


def _as_fork_classes(root: nn.Module, names: dict) -> None:
    """Re-class modules as the placeholders a fork pickle unpickles to (type -> fork class name)."""
    from dcnv3.yolo.fork_layouts import fork_placeholder

    for module in root.modules():
        if type(module) in names:
            module.__class__ = fork_placeholder("ultralytics.nn.extra_modules.block", names[type(module)])


def test_shapes_without_a_fork_fixture_are_recognised_and_compute_the_same():
    """The rules beyond the fixtures: a C3-shaped container, a block with a `stem_conv` and
    `gelu`, InternImage's BatchNorm depthwise branch and center_feature_scale."""
    from ultralytics.nn.modules.conv import Conv

    from dcnv3.ops.dcnv3 import DCNv3
    from dcnv3.yolo.blocks import dcnv3 as blocks
    from dcnv3.yolo.fork_layouts import adopt_fork_modules

    torch.manual_seed(0)
    container = blocks.C3k_DCNv3(32, 32, n=2, e=0.5).eval()
    inner = container.m[0].cv2
    inner.dcnv3 = DCNv3(16, 3, group=2, norm_layer="BN", center_feature_scale=True).eval()
    stem_block = blocks.DCNV3_YoLo(8, 16, g=2).eval()
    stem_block.act = nn.GELU()
    for op in (inner.dcnv3, stem_block.dcnv3, container.m[1].cv2.dcnv3):
        nn.init.normal_(op.offset.bias, std=1.0)
        nn.init.normal_(op.mask.weight, std=0.5)
    x, y = torch.randn(1, 32, 12, 10), torch.randn(1, 8, 12, 10)
    with torch.no_grad():
        expected_container, expected_block = container(x), stem_block(y)
    # As the fork spells them: the block's stem under `stem_conv`, its activation under `gelu`.
    stem_block._modules = type(stem_block._modules)(
        ({"conv": "stem_conv", "act": "gelu"}.get(k, k), v) for k, v in stem_block._modules.items()
    )
    names = {
        blocks.C3k_DCNv3: "C3_DCNv3",
        blocks.Bottleneck_DCNv3: "Bottleneck_DCNV3",
        blocks.DCNV3_YoLo: "DCNV3_YOLO",
        DCNv3: "DCNv3",
    }
    _as_fork_classes(container, names)
    _as_fork_classes(stem_block, names)
    # the container, 2 x (bottleneck, block, operator), the stem block and its operator
    assert adopt_fork_modules([container, stem_block]) == 1 + 2 * 3 + 2
    assert type(container) is blocks.C3k_DCNv3 and type(inner.dcnv3) is DCNv3
    assert list(stem_block._modules) == ["conv", "dcnv3", "bn", "act"] and isinstance(stem_block.conv, Conv)
    with torch.no_grad():
        assert torch.equal(container(x), expected_container)
        assert torch.equal(stem_block(y), expected_block)


@pytest.mark.parametrize("children", [[1, 2], {"cv1": "not a module"}])
def test_malformed_fork_state_is_refused(tmp_path, children):
    """A placeholder's saved state comes from the file: children that are not modules are refused."""
    from dcnv3.yolo.checkpoints import CheckpointError, safe_load

    fork = types.ModuleType(FOO_MODULE)
    cls = type("C2f_Bad", (nn.Module,), {"__module__": FOO_MODULE})
    fork.C2f_Bad = cls
    broken = cls()
    broken.__dict__["_modules"] = children
    sys.modules[FOO_MODULE] = fork
    try:
        torch.save({"model": broken}, tmp_path / "bad.pt")
    finally:
        del sys.modules[FOO_MODULE]
    with pytest.raises(CheckpointError, match="C2f_Bad whose"):
        safe_load(tmp_path / "bad.pt")
