"""DCNv4 in YOLO: the shipped YAMLs parse like their stock twins, and a checkpoint of the YOLO11
extra_modules family's C3k2_DCNv4 / DCNV4_YOLO / DCNv4 layout loads by structure and computes
what the fork computed.

The fixture (tests/data/forks/extra_v11_dcnv4, built by tests/forks/make_dcnv4_fixtures.py from
the fork's own code; see its README) is loaded in a clean interpreter where no fork code exists,
as best.pt and as last.pt. Bounds (shared by every fork fixture, ../shared/fixtures/README.md):

- boxes (pred rows 0-3, pixels): 0.1 px. fp32 summation order alone (another CPU's kernels,
  another formulation of the deformable sum) moves them by up to ~0.03 px; this fixture's own
  fp32-vs-fp64 distance is 0.008 px. A wrong reading (offsets zeroed: 416 px, read as (dy, dx):
  176 px, a missing layer, the wrong activation) lands far outside.
- class scores (rows 4+, in [0, 1]): 1e-3 (fp32 vs fp64 here: 9e-5).
- each DCNv4's offset_mask Linear output: 2e-3 + 2e-3 |x| elementwise (fp32 rounding of a
  Linear over features that went through the layers before it).
"""

import copy

import pytest
import torch
from child_process import run_python
from repo_paths import ROOT
from ultralytics.nn import tasks
from ultralytics.nn.modules.block import Bottleneck, C2f, C3k, C3k2

from dcnv3.ops.capture import deformable_modules
from dcnv3.ops.dcnv4 import DCNv4
from dcnv3.yolo import model_yaml
from dcnv3.yolo.blocks.dcnv4 import DCNV4_YOLO, Bottleneck_DCNV4, C2f_DCNv4, C3k2_DCNv4, C3k_DCNv4

FIXTURE = ROOT / "tests" / "data" / "forks" / "extra_v11_dcnv4"
LAYOUT = "extra_v11_dcnv4"
BOX_PX, SCORE, LAYER_ABS, LAYER_REL = 0.1, 1e-3, 2e-3, 2e-3
DCN_LAYERS = (4, 6, 8)  # backbone P3, P4, P5, as in the DCNv3 YAMLs
TWIN = {"yolov8": (C2f, C2f_DCNv4), "yolo11": (C3k2, C3k2_DCNv4)}
INNER_TWIN = {Bottleneck: Bottleneck_DCNV4, C3k: C3k_DCNv4}


def parsed_layers(yaml_name: str) -> torch.nn.Sequential:
    """parse_model's layers for a YAML name, on the meta device (shapes and counts only)."""
    with torch.device("meta"):
        cfg = tasks.yaml_model_load(yaml_name)
        layers, _ = tasks.parse_model(copy.deepcopy(cfg), ch=3, verbose=False)
    return layers


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
def test_dcnv4_yamls_parse_like_their_stock_twins(family, report):
    """At every scale: the DCNv4 containers at layers 4, 6, 8 with their stock twin's channels and
    inner blocks (C3k at m, l, x for YOLO11), every other layer the stock one parameter for
    parameter; every DCNv4 group 1 (the family's choice), kernel 3, stride 1."""
    stock_class, ours_class = TWIN[family]
    for scale in "nsmlx":
        name = model_yaml(scale, family=family, operator="dcnv4")
        assert name == f"dcnv4-{family}{scale}.yaml"
        ours, stock = parsed_layers(name), parsed_layers(f"{family}{scale}.yaml")
        assert len(ours) == len(stock)
        for index, (layer, twin) in enumerate(zip(ours, stock)):
            if index in DCN_LAYERS:
                assert type(layer) is ours_class and type(twin) is stock_class
                assert [type(block) for block in layer.m] == [INNER_TWIN[type(block)] for block in twin.m]
                assert layer.cv1.conv.weight.shape == twin.cv1.conv.weight.shape
                assert layer.cv2.conv.weight.shape == twin.cv2.conv.weight.shape
            else:
                assert type(layer) is type(twin) and layer.np == twin.np, f"{name} layer {index}"
        dcn = deformable_modules(ours)
        assert dcn and all(
            type(m) is DCNv4 and (m.group, m.kernel_size, m.stride, m.pad) == (1, 3, 1, 1) for _, m in dcn
        )
        assert len(dcn) == sum(isinstance(block, DCNV4_YOLO) for block in ours.modules())  # one each
        if scale == "n":
            report(
                f"{name}: {sum(p.numel() for p in ours.parameters()):,} parameters, {len(dcn)} DCNv4 layers "
                f"(channels {[m.channels for _, m in dcn]}); {family}{scale}: "
                f"{sum(p.numel() for p in stock.parameters()):,}"
            )


def test_dcnv4_fork_layout_reproduces_the_fork_as_best_and_last_in_a_clean_process(report):
    out = run_python(
        "-c",
        f"""
import sys, cv2, torch
import dcnv3
from dcnv3.yolo.loading import load_model
from dcnv3.analysis.probe import probe
from ultralytics.data.augment import LetterBox

image = cv2.imread({str(ROOT / "assets" / "examples" / "bus.jpg")!r})
x = torch.from_numpy(LetterBox((640, 640), auto=True, stride=32)(image=image)[..., ::-1].copy())
x = x.permute(2, 0, 1)[None].float() / 255
expected = torch.load({str(FIXTURE / f"{LAYOUT}_expected.pt")!r}, weights_only=True)
assert list(x.shape) == expected["input_shape"] and abs(x.double().sum().item() - expected["input_sum"]) < 1e-3

def excess(actual, reference):  # largest |diff| / bound (<= 1 passes)
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    return ((actual - reference).abs() / ({LAYER_ABS} + {LAYER_REL} * reference.abs())).max().item()

names = sorted(k.rsplit(".", 1)[0] for k in expected["layers"])
for kind in ("best", "last"):
    model = load_model({str(FIXTURE)!r} + f"/{LAYOUT}_{{kind}}.pt")
    assert sorted(model.deformable_layers) == names, model.deformable_layers
    # grid_sample: InternImage's core's own formulation (best.pt only: last.pt holds the same network)
    for formulation in ("native", "grid_sample") if kind == "best" else ("native",):
        dcnv3.set_default_formulation(formulation)
        with dcnv3.capture(model.model) as layers, torch.no_grad():
            pred = model.model(x)[0]
        ref = expected["pred"]
        boxes = (pred[:, :4] - ref[:, :4]).abs().max().item()
        scores = (pred[:, 4:] - ref[:, 4:]).abs().max().item()
        assert boxes <= {BOX_PX} and scores <= {SCORE}, (kind, formulation, boxes, scores)
        ratio = max(excess(record.raw["offset_mask"], expected["layers"][name + ".offset_mask"])
                    for name, record in layers.items())
        assert ratio <= 1, (kind, formulation, ratio)
        assert {{record.weight_kind for record in layers.values()}} == {{"free"}}
        print(f"{{kind}} {{formulation}}: boxes {{boxes:.2g}} px, scores {{scores:.2g}}, "
              f"offset_mask {{ratio:.2g}} of the bound")
    dcnv3.set_default_formulation("native")
# The probe (the app's path: letterbox, inference copy, NMS) lists every DCNv4 layer, weight kind
# "free", with the fork's offsets and scalars in the record layout (per group: 2P offsets as
# (dx, dy) pairs, then P scalars, of the offset_mask row).
result = probe(model, {str(ROOT / "assets" / "examples" / "bus.jpg")!r}, imgsz=640)
assert [layer.name for layer in result.layers] == model.deformable_layers
for layer in result.layers:
    assert layer.weight_kind == "free", (layer.name, layer.weight_kind)
    g, p = layer.groups, layer.points
    rows = expected["layers"][layer.name + ".offset_mask"][0][..., :g * 3 * p].unflatten(-1, (g, 3 * p))
    offsets, scalars = rows[..., :2 * p].unflatten(-1, (p, 2)), rows[..., 2 * p:]
    assert excess(torch.from_numpy(layer.offsets).float(), offsets) <= 1, layer.name
    assert excess(torch.from_numpy(layer.weights).float(), scalars) <= 1, layer.name
    assert (scalars < 0).any() and (scalars.abs() > 1).any()  # signed, unbounded: nothing normalised them
forks = [name for name in sys.modules if name.startswith("DCNv4") or "extra_modules" in name]
assert not forks, forks
print("probe", len(result.layers), "layers, kinds", sorted({{layer.weight_kind for layer in result.layers}}))
""",
    )
    assert "probe 5 layers, kinds ['free']" in out, out[-3000:]
    for line in out.splitlines():
        if line.startswith(("best", "last")):
            report(f"DCNv4 fork layout {LAYOUT} {line}")


def test_dcnv4_layouts_that_do_not_compute_a_dcnv4_are_refused(tmp_path):
    """The recogniser checks what the fork's DCNv4 holds: a wrong offset_mask width, a stride the
    fork's forward cannot compute, or pointwise projections that contradict without_pointwise are
    refused with what is wrong, before anything runs."""
    from dcnv3.yolo.checkpoints import CheckpointError, safe_load
    from dcnv3.yolo.loading import load_model

    source = FIXTURE / f"{LAYOUT}_best.pt"
    cases = {  # label: (edit of the first DCNv4, what the refusal must say)
        "unchanged": (lambda op: None, None),
        "offset_mask": (
            lambda op: setattr(op, "offset_mask", torch.nn.Linear(op.channels, 24)),
            "whose `offset_mask` is not Linear(16, 32)",
        ),
        "stride_2": (lambda op: setattr(op, "stride", 2), "a DCNv4 of stride 2, pad 1"),
        "without_pointwise": (
            lambda op: setattr(op, "without_pointwise", True),
            "(without_pointwise True) holding ['output_proj', 'value_proj']",
        ),
    }
    for label, (edit, reason) in cases.items():
        checkpoint = safe_load(source)  # the fork's modules adopted: dcnv3.DCNv4 and our blocks
        op = next(m for m in checkpoint["model"].modules() if isinstance(m, DCNv4))
        edit(op)
        path = tmp_path / f"{label}.pt"
        _save_as_fork(checkpoint, path)
        if reason is None:  # the re-saved fork file itself loads: the refusals below are the edits'
            assert len(load_model(path).deformable_layers) == 5
            continue
        with pytest.raises(CheckpointError) as error:
            load_model(path)
        assert "`DCNv4` (DCNv4.modules.dcnv4.DCNv4)" in str(error.value) and reason in str(error.value), (
            label,
            str(error.value)[:600],
        )


def _save_as_fork(checkpoint: dict, path) -> None:
    """Save ``checkpoint`` with the fork's class paths: our DCNv4 and DCNv4 blocks pickled under
    ``DCNv4.modules.dcnv4`` and ``ultralytics.nn.extra_modules.block`` (classes that exist only
    while saving), as the fork's own file names them."""
    import sys
    import types

    from dcnv3.yolo.blocks import dcnv4 as blocks_dcnv4

    paths = {DCNv4: ("DCNv4.modules.dcnv4", "DCNv4")}
    for cls in (
        blocks_dcnv4.DCNV4_YOLO,
        blocks_dcnv4.Bottleneck_DCNV4,
        blocks_dcnv4.C3k_DCNv4,
        blocks_dcnv4.C3k2_DCNv4,
    ):
        paths[cls] = ("ultralytics.nn.extra_modules.block", cls.__name__)
    created, swapped = [], []
    try:
        for cls, (module_name, name) in paths.items():
            parts = module_name.split(".")
            for depth in range(1, len(parts) + 1):  # pickle imports the module, parents first
                prefix = ".".join(parts[:depth])
                if prefix not in sys.modules:
                    sys.modules[prefix] = types.ModuleType(prefix)
                    created.append(prefix)
            fork_class = type(name, (torch.nn.Module,), {"__module__": module_name})
            setattr(sys.modules[module_name], name, fork_class)
            for module in checkpoint["model"].modules():
                if type(module) is cls:
                    module.__class__ = fork_class
                    swapped.append((module, cls))
        torch.save(checkpoint, path)
    finally:
        for module, cls in swapped:
            module.__class__ = cls
        for module_name in created:
            del sys.modules[module_name]
