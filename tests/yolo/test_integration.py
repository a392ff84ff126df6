"""dcnv3 imports without side effects; dcnv3.yolo: register / unregister / registered, opt-in
safe loading, user-allowed classes, CPU threads, the tested ultralytics range, offline fonts."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from ultralytics import YOLO

from dcnv3 import yolo
from dcnv3.yolo import _check_version, checkpoints, cpu_cores


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_import_dcnv3_has_no_side_effects():
    """The operator package imports torch only and changes nothing: no ultralytics, no warning
    filters, no thread count, no environment variables."""
    out = run_python("""
        import os, sys, warnings, torch
        filters, threads, env = list(warnings.filters), torch.get_num_threads(), dict(os.environ)
        import dcnv3
        from dcnv3 import capture
        from dcnv3.ops import core as ops, dcnv3 as module
        assert 'ultralytics' not in sys.modules and 'gradio' not in sys.modules and 'cv2' not in sys.modules
        assert warnings.filters == filters, "global warning filters changed"
        assert torch.get_num_threads() == threads and dict(os.environ) == env
        import dcnv3.yolo  # the integration module itself changes nothing either
        assert 'ultralytics' not in sys.modules and dict(os.environ) == env
        print("clean", sorted(dcnv3.__all__))
    """)
    assert "clean" in out and "'dcnv3_core'" in out


def test_unregister_restores_what_register_changed():
    out = run_python("""
        from ultralytics.nn import tasks
        from dcnv3 import yolo
        before = (tasks.parse_model, tasks.torch_safe_load, tasks.BaseModel.fuse, tasks.check_yaml)
        names = set(vars(tasks))
        assert not yolo.is_registered()
        yolo.register(); yolo.register()  # idempotent
        assert tasks.parse_model is not before[0] and tasks.torch_safe_load is not before[1]
        assert tasks.BaseModel.fuse is not before[2] and "C2f_DCNv3" in vars(tasks)
        from ultralytics import YOLO
        assert len(list(YOLO("dcnv3-yolov8n.yaml").model.modules())) > 100
        yolo.unregister()
        assert (tasks.parse_model, tasks.torch_safe_load, tasks.BaseModel.fuse, tasks.check_yaml) == before
        assert set(vars(tasks)) == names, set(vars(tasks)) ^ names
        with yolo.registered():
            assert tasks.parse_model is not before[0]
        assert (tasks.parse_model, tasks.torch_safe_load, tasks.BaseModel.fuse) == before[:3]
        assert not yolo.is_registered()
        print("restored")
    """)
    assert "restored" in out


def test_register_is_idempotent():
    from ultralytics.nn import tasks

    parse_model = tasks.parse_model
    yolo.register()
    assert tasks.parse_model is parse_model


def test_registered_keeps_an_outer_registration():
    from ultralytics.nn import tasks

    parse_model = tasks.parse_model
    with yolo.registered(safe_loading=True):
        assert tasks.parse_model is parse_model
    assert yolo.is_registered() and tasks.parse_model is parse_model


def test_ultralytics_own_loader_is_used_unless_safe_loading_is_chosen(monkeypatch, tmp_path):
    """Routing every ultralytics checkpoint load through the restricted unpickler is opt-in;
    ``load_model`` is safe either way."""
    from repo_paths import BUNDLED_PLAIN
    from ultralytics.nn import tasks

    calls = []
    real = checkpoints.safe_load
    monkeypatch.setattr(checkpoints, "safe_load", lambda path, **kw: calls.append(path) or real(path, **kw))
    with yolo.registered(safe_loading=False):
        checkpoint, _ = tasks.torch_safe_load(str(BUNDLED_PLAIN))
        assert calls == [] and "model" in checkpoint
    with yolo.registered(safe_loading=True):
        tasks.torch_safe_load(str(BUNDLED_PLAIN))
        assert len(calls) == 1


class UserBlock(nn.Module):
    """A user's own module class (this test file's), as in a custom YAML."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)


def test_user_classes_are_allowed_with_add_safe_globals(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"model": UserBlock()}, path)
    with pytest.raises(checkpoints.UnsafeCheckpointError, match="UserBlock"):
        checkpoints.safe_load(path)
    checkpoints.add_safe_globals([UserBlock])
    try:
        assert UserBlock in checkpoints.get_safe_globals()
        loaded = checkpoints.safe_load(path)["model"]
        assert type(loaded) is UserBlock and loaded.proj.weight.shape == (2, 2)
    finally:
        checkpoints.clear_safe_globals()
    with pytest.raises(checkpoints.UnsafeCheckpointError):
        checkpoints.safe_load(path)


def test_predict_and_device_selection_use_every_core():
    from ultralytics.utils.torch_utils import select_device

    model = YOLO("dcnv3-yolov8n.yaml")
    model.predict(np.zeros((32, 32, 3), np.uint8), imgsz=32, verbose=False)
    assert torch.get_num_threads() == cpu_cores()
    select_device("cpu", verbose=False)  # what the trainer calls before training
    assert torch.get_num_threads() == cpu_cores()


def test_untested_ultralytics_version_fails_clearly(monkeypatch):
    monkeypatch.delenv("DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS", raising=False)
    _check_version("8.4.190")
    for version in ("8.3.200", "8.5.0", "9.0.1"):
        with pytest.raises(ImportError, match="tested with ultralytics"):
            _check_version(version)
    monkeypatch.setenv("DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS", "1")
    _check_version("8.5.0")


def test_plot_fonts_are_installed_locally():
    from ultralytics.utils import USER_CONFIG_DIR
    from ultralytics.utils.checks import check_font

    assert (USER_CONFIG_DIR / "Arial.ttf").is_file()
    assert check_font("Arial.ttf") == USER_CONFIG_DIR / "Arial.ttf"  # found, nothing downloaded


def test_keep_freed_memory_applies_on_glibc():
    """In a child process: the setting is process-wide and the test process keeps its own."""
    import platform
    import subprocess
    import sys

    code = "from dcnv3.yolo import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")


def test_the_package_version_is_the_projects():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from repo_paths import ROOT

    import dcnv3

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert dcnv3.__version__ == project["version"]
