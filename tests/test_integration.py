"""dcnv3.integration: CPU threads, the tested ultralytics range, offline fonts."""
import numpy as np
import pytest
import torch
from ultralytics import YOLO

import dcnv3
from dcnv3.integration import _check_version, cpu_cores


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


def test_register_is_idempotent():
    from ultralytics.nn import tasks

    parse_model = tasks.parse_model
    dcnv3.register()
    assert tasks.parse_model is parse_model


def test_keep_freed_memory_applies_on_glibc():
    """In a child process: the setting is process-wide and the test process keeps its own."""
    import platform
    import subprocess
    import sys

    code = "from dcnv3.integration import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
