"""Loading checkpoints: the fork fixture, other fork layouts, hostile and unsuitable files."""

import os
import pickle
import random
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from fakes import RunsCommand
from repo_paths import ROOT
from ultralytics import YOLO

from dcnv3 import yolo
from dcnv3.yolo.checkpoints import CheckpointError, UnsafeCheckpointError
from dcnv3.yolo.loading import load_model

DATA = ROOT / "tests" / "data"
FORK_A = DATA / "fork_fixture" / "fork_A.pt"
FORK_A_EXPECTED = DATA / "fork_fixture" / "fork_A_expected.pt"


def run_python(code: str, cwd=None) -> str:
    """Run code in a fresh interpreter (no fork code, nothing imported yet); return stdout."""
    env = {**os.environ, "YOLO_OFFLINE": "true"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_fork_a_matches_what_the_fork_computed_in_a_clean_process():
    out = run_python(f"""
        import sys, torch, cv2
        import dcnv3
        from dcnv3.yolo.loading import load_model
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils import ASSETS
        assert not any("ops_dcnv3" in name for name in sys.modules)
        expected = torch.load({str(FORK_A_EXPECTED)!r}, weights_only=True)
        model = load_model({str(FORK_A)!r})
        image = cv2.imread(str(ASSETS / "bus.jpg"))
        boxed = LetterBox((640, 640), auto=True, stride=32)(image=image)
        x = torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        assert list(x.shape) == expected["input_shape"], x.shape
        assert abs(x.double().sum().item() - expected["input_sum"]) < 1e-3
        with dcnv3.capture(model.model) as layers, torch.no_grad():
            pred = model.model(x)[0]

        # The bounds of shared/fixtures/README.md, which hold on any CPU: fp32 summation order
        # (another CPU's convolution kernels, another formulation of the DCNv3 sum) moves boxes
        # by up to ~0.03 px, so boxes get 0.1 px; scores in [0, 1] move by ~1e-4, so 1e-3; the
        # offset and mask projections 2e-3 + 2e-3 |x|. A wrong reading of the checkpoint moves
        # boxes by tens to hundreds of pixels.
        def check(name, actual, reference, absolute, relative=0.0):
            assert actual.shape == reference.shape, (name, actual.shape)
            excess = (actual - reference).abs() - (absolute + relative * reference.abs())
            assert excess.max() <= 0, (name, excess.max().item())
            return (actual - reference).abs().max().item()

        pred, reference = pred[0], expected["pred"][0]  # (84, anchors): rows 0-3 boxes, 4+ scores
        print("boxes", check("boxes", pred[:4], reference[:4], 0.1))
        print("scores", check("scores", pred[4:], reference[4:], 1e-3))
        for name, record in layers.items():
            check(name + ".offset", record.offset_raw, expected["layers"][name + ".offset"], 2e-3, 2e-3)
            check(name + ".mask_logits", record.mask_logits, expected["layers"][name + ".mask_logits"], 2e-3, 2e-3)
        print("layers", len(layers), sorted(expected["layers"]) == sorted(
            [n + s for n in layers for s in (".offset", ".mask_logits")]))
    """)
    assert "layers 5 True" in out


def test_load_model_reports_deformable_layers_and_predicts():
    model = load_model(FORK_A)
    assert model.task == "detect"
    assert model.deformable_layers == [
        "model.4.m.0.cv2.dcnv3",
        "model.4.m.1.cv2.dcnv3",
        "model.6.m.0.cv2.dcnv3",
        "model.6.m.1.cv2.dcnv3",
        "model.8.m.0.cv2.dcnv3",
    ]
    assert next(model.model.parameters()).dtype == torch.float32
    result = model.predict(torch.rand(1, 3, 64, 64), verbose=False)[0]
    assert result.boxes is not None


def test_plain_yolov8_detector_loads_without_dcnv3(tmp_path):
    YOLO("yolov8n.yaml").save(tmp_path / "plain.pt")
    model = load_model(tmp_path / "plain.pt")
    assert model.deformable_layers == []
    assert model.predict(torch.rand(1, 3, 64, 64), verbose=False)


@pytest.mark.parametrize(
    "yaml,kind",
    [("yolov8n-cls.yaml", "classifier"), ("yolov8n-seg.yaml", "segmentation"), ("yolov8n-pose.yaml", "pose")],
)
def test_non_detectors_are_refused_with_a_clear_message(tmp_path, yaml, kind):
    YOLO(yaml).save(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=kind):
        load_model(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a readable PyTorch checkpoint"),
        # Seeded noise, so every run reads the same bytes: fresh os.urandom bytes now and then parse as
        # a legacy pickle whose storage claims more memory than exists, which is refused as
        # "not a loadable checkpoint" (one run in a few hundred): both messages are right for noise.
        (random.Random(0).randbytes(4096), "not a (readable PyTorch|loadable) checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "file.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_zip_without_pickle_and_torchscript_archives(tmp_path):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "scripted.pt"))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_model(tmp_path / "scripted.pt")


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="limit"):
        load_model(FORK_A, max_bytes=1000)


def test_dict_without_a_model(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="without a model"):
        load_model(tmp_path / "sd.pt")


class _CallsModelClass:
    """Pickles to a *call* of an allowed module class with attacker arguments: ultralytics'
    DetectionModel(cfg) would eval() the YAML's activation string."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        cfg = {
            "nc": 1,
            "activation": f"__import__('pathlib').Path({str(self.marker)!r}).touch()",
            "backbone": [[-1, 1, "Conv", [16, 3, 2]]],
            "head": [[-1, 1, "Conv", [16, 3, 2]]],
        }
        return (DetectionModel, (cfg,))


@pytest.mark.parametrize("payload", ["top_level", "inside_model", "module_call"])
def test_hostile_checkpoints_are_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "top_level":
        evil = {"model": RunsCommand(f"touch {marker}")}
    elif payload == "inside_model":
        model = YOLO("yolov8n.yaml").model
        model.extra = RunsCommand(f"touch {marker}")  # hidden in the module's __dict__
        evil = {"model": model}
    else:
        evil = {"model": _CallsModelClass(marker)}
    path = tmp_path / "evil.pt"
    torch.save(evil, path)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_model(path)
    assert not marker.exists()
    expected = {"top_level": "posix.system", "inside_model": "posix.system", "module_call": "DetectionModel"}[payload]
    assert expected in str(error.value)
    # ultralytics' own loading path is guarded too once the user opts in.
    with yolo.registered(safe_loading=True), pytest.raises(UnsafeCheckpointError):
        YOLO(str(path))
    assert not marker.exists()


def test_plain_pickle_protocols(tmp_path):
    """A non-torch pickle of a hostile object (protocol 0 uses INST/REDUCE differently)."""
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 4):
        path = tmp_path / f"p{protocol}.pt"
        path.write_bytes(pickle.dumps({"model": RunsCommand(f"touch {marker}")}, protocol=protocol))
        with pytest.raises(CheckpointError):
            load_model(path)
        assert not marker.exists()


FORK_LAYOUT_BUILDER = """
    import sys, types, torch
    import dcnv3
    from dcnv3.yolo.blocks import dcnv3 as blocks
    from dcnv3.ops import dcnv3 as dcn_module
    from dcnv3 import yolo
    from ultralytics import YOLO
    yolo.register()
    layout = {layout!r}

    def fake_class(module_path, name, base):
        mod = sys.modules.setdefault(module_path, types.ModuleType(module_path))
        cls = type(name, (base,), {{"__module__": module_path}})
        setattr(mod, name, cls)
        return cls

    paths = {{
        "extra_modules": ("ultralytics.nn.extra_modules.block", "ultralytics.ops_dcnv3.modules.dcnv3",
                          "DCNV3_YOLO", "C2f_DCNv3", "Bottleneck_DCNV3", "DCNv3_pytorch"),
        "conv_pytorch": ("ultralytics.nn.modules.block", "ultralytics.nn.modules.conv",
                         "DCNV3_YoLo", "C2f_DCNV3", "Bottleneck_DCNV3", "DCNv3_PyTorch"),
    }}[layout["paths"]]
    block_mod, op_mod, yolo_name, c2f_name, bottleneck_name, op_name = paths
    swaps = {{blocks.DCNV3_YoLo: fake_class(block_mod, yolo_name, blocks.DCNV3_YoLo),
             blocks.C2f_DCNv3: fake_class(block_mod, c2f_name, blocks.C2f_DCNv3),
             blocks.Bottleneck_DCNv3: fake_class(block_mod, bottleneck_name, blocks.Bottleneck_DCNv3),
             dcn_module.DCNv3: fake_class(op_mod, op_name, dcn_module.DCNv3)}}
    torch.manual_seed(0)
    model = YOLO("dcnv3-yolov8n.yaml").model.eval()
    for m in model.modules():
        if isinstance(m, dcn_module.DCNv3):
            with torch.no_grad():
                m.offset.bias.normal_(0, 2.0); m.mask.weight.normal_(0, 0.2)
            if layout["v1"]:
                del m.remove_center  # InternImage ops v1.0 has no such attribute
            if layout["dcn_v4_flag"]:
                m.use_dcn_v4_op = False  # the detection branch's extra attribute
        if isinstance(m, blocks.DCNV3_YoLo) and layout["stemless"]:
            del m.conv  # the fork that drops the 1x1 stem when in == out channels
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        expected = model(x)[0]
    for m in model.modules():
        if type(m) in swaps:
            m.__class__ = swaps[type(m)]
    torch.save({{"model": model.half(), "train_args": {{"task": "detect"}}, "version": "8.1.9"}}, "fork.pt")
    torch.save({{"x": x, "expected": expected}}, "expected.pt")
    print(sorted(torch.serialization.get_unsafe_globals_in_checkpoint("fork.pt")))
"""


@pytest.mark.parametrize(
    "layout",
    [
        {"paths": "extra_modules", "v1": True, "dcn_v4_flag": False, "stemless": False},
        {"paths": "conv_pytorch", "v1": False, "dcn_v4_flag": True, "stemless": True},
    ],
    ids=["extra_modules-ops_v1", "conv_pytorch-dcn_v4_flag-stemless"],
)
def test_other_fork_layouts_load(tmp_path, layout):
    printed = run_python(FORK_LAYOUT_BUILDER.format(layout=layout), cwd=tmp_path)
    fork_globals = printed.strip()
    assert ("extra_modules" in fork_globals) == (layout["paths"] == "extra_modules")
    out = run_python(
        """
        import sys, torch, dcnv3
        from dcnv3.yolo.loading import load_model
        model = load_model("fork.pt")
        assert "ultralytics.nn.extra_modules" not in sys.modules
        data = torch.load("expected.pt", weights_only=True)
        with torch.no_grad():
            pred = model.model(data["x"])[0]
        # fp16 storage of the weights moves the raw output a little
        error = ((pred - data["expected"]).abs() / (1 + data["expected"].abs())).max().item()
        print(len(model.deformable_layers), error)
        assert error < 2e-2, error
    """,
        cwd=tmp_path,
    )
    assert out.split()[0] == "5"


@pytest.mark.parametrize("centre_scale_path", ["dcnv3.ops.dcnv3", "dcnv3.ops.dcnv4", "dcnv3.module", "dcnv3.dcnv4"])
def test_operator_class_paths_resolve_for_the_restricted_unpickler(tmp_path, monkeypatch, centre_scale_path):
    """Checkpoints pickle our operators by class path; the shared ``CenterFeatureScaleModule`` lives
    in dcnv3.ops.dcnv3, a DCNv4 file may name it under ``dcnv3.ops.dcnv4``, and files saved before 0.2
    under the old modules ``dcnv3.module`` / ``dcnv3.dcnv4`` (mapped by the unpickler's
    MOVED_MODULES): all load, and compute what was saved."""
    import zipfile

    from dcnv3.ops import dcnv3 as module
    from dcnv3.ops import dcnv4
    from dcnv3.ops.dcnv2 import DCNv2
    from dcnv3.yolo.checkpoints import safe_load

    assert dcnv4.CenterFeatureScaleModule is module.CenterFeatureScaleModule
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        [module.DCNv3(16, group=2, center_feature_scale=True), dcnv4.DCNv4(16, group=2, center_feature_scale=True)]
    )
    for layer in layers:  # the blend's projection away from zero, so the test sees it
        torch.nn.init.normal_(layer.center_feature_scale_proj_weight)
    plain = DCNv2(16, 16)
    path = tmp_path / "operators.pt"
    monkeypatch.setattr(module.CenterFeatureScaleModule, "__module__", centre_scale_path)
    # pickle checks that the class is importable under that path: an old path is lent its module
    # while saving only (the unpickler below never imports anything).
    monkeypatch.setitem(sys.modules, centre_scale_path, sys.modules.get(centre_scale_path, module))
    torch.save({"model": layers, "dcnv2": plain}, path)
    monkeypatch.undo()
    assert centre_scale_path.startswith("dcnv3.ops.") or centre_scale_path not in sys.modules
    with zipfile.ZipFile(path) as archive:
        pickled = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    for name in (b"dcnv3.ops.dcnv3\nDCNv3", b"dcnv3.ops.dcnv4\nDCNv4", b"dcnv3.ops.dcnv2\nDCNv2"):
        assert name in pickled
    assert f"{centre_scale_path}\nCenterFeatureScaleModule".encode() in pickled
    loaded = safe_load(path)
    image = torch.randn(1, 16, 6, 6)
    inputs = (image.permute(0, 2, 3, 1), image)  # DCNv3 channels-last, DCNv4 (N, C, H, W)
    with torch.no_grad():
        for ours, theirs, x in zip(layers, loaded["model"], inputs):
            assert type(theirs.center_feature_scale_module) is module.CenterFeatureScaleModule
            torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded["dcnv2"].eval()(image), plain.eval()(image), rtol=0, atol=0)
