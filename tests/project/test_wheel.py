"""The package as a user installs it: ``pip wheel . --no-deps``, then the wheel alone (non-editable,
with its declared dependencies) in a new virtual environment, run from a folder outside the
checkout. The bundled checkpoints, lesson network, examples, demo video and training demo travel
in the wheel (``setup.py``; found through ``dcnv3.bundled``); the screenshots stay out.

Slow (a new environment installs torch, ultralytics and gradio: about two minutes here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from app_server import OFFLINE_ENV, app_process
from repo_paths import EXAMPLES, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.server]  # builds a wheel, installs it, serves the app

SHIPPED = [
    "dcnv3/assets/models/dcnv3-yolov8n.pt",
    "dcnv3/assets/models/yolov8n.pt",
    "dcnv3/assets/models/MODEL_CARD.md",
    "dcnv3/assets/models/lesson/lesson-dcnv3.pt",
    "dcnv3/assets/models/lesson/LESSON_CARD.md",
    "dcnv3/assets/examples/bus.jpg",
    "dcnv3/assets/examples/shapes_0.jpg",
    "dcnv3/assets/demo_shapes.mp4",
    "dcnv3/assets/training_demo/run/health.csv",
    "dcnv3/assets/training_demo/scene.jpg",
    "dcnv3/yolo/cfg/dcnv3-yolov8.yaml",
    "dcnv3/ops/native/dcnv3_cpu.cpp",
    "viz_app/components/sampling_hover.js",  # the Sampling view's hover runs it in the browser
]


def run(command: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """A command with the offline settings and without this test run's import path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env={**env, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def source_tree(folder: Path) -> Path:
    """A copy of what a commit of this checkout holds (tracked and not-ignored files; the tests
    and screenshots left out), so the wheel is built as from a clean clone, and setuptools'
    build/ folder lands there rather than in the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        source = ROOT / name
        if name.startswith(("tests/", "assets/screenshots/")) or not source.is_file():
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = source_tree(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", out], cwd=source)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (path,) = out.glob("deformlens-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a new environment holding only the wheel and its dependencies, a folder
    outside the checkout to run from)."""
    env_dir = tmp_path_factory.mktemp("fresh") / "env"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    done = run([bin_dir / "python", "-m", "pip", "install", "--quiet", wheel], cwd=env_dir, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    return bin_dir, elsewhere


def test_the_wheel_holds_the_bundled_assets_but_not_the_screenshots(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [name for name in SHIPPED if name not in names] == []
    assert not [name for name in names if "screenshots" in name]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "deformlens = dcnv3.cli:main" in entry_points and "deformlens-app = viz_app.server:main" in entry_points


def test_the_installed_cli_answers_help(installed):
    bin_dir, elsewhere = installed
    result = run([bin_dir / "deformlens", "--help"], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "health" in result.stdout and "train" in result.stdout


def test_a_bundled_name_loads_the_bundled_checkpoint_from_site_packages(installed):
    bin_dir, elsewhere = installed
    script = (
        "import dcnv3, pathlib\n"
        "from dcnv3.yolo.loading import load_model\n"
        "from dcnv3.bundled import assets_root\n"
        "model = load_model('dcnv3-yolov8n.pt')\n"
        "print(pathlib.Path(dcnv3.__file__).resolve().parent)\n"
        "print(assets_root())\n"
        "print(len(model.deformable_layers))\n"
    )
    result = run([bin_dir / "python", "-c", script], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    package, assets, layers = result.stdout.split()[-3:]
    assert "site-packages" in package and not package.startswith(str(ROOT)), package
    assert assets == str(Path(package) / "assets")
    assert int(layers) == 5  # the bundled DCNv3-YOLOv8n: five DCNv3 layers


def test_the_installed_app_serves_with_the_bundled_model_and_examples(installed):
    from gradio_client import Client, handle_file

    bin_dir, elsewhere = installed
    with app_process(cwd=elsewhere, command=[bin_dir / "deformlens-app"], timeout=300) as (_, url, lines):
        client = Client(url, verbose=False)
        config = client.config
        dropdown_values = [c.get("props", {}).get("value") for c in config["components"]]
        assert "dcnv3-yolov8n.pt" in dropdown_values  # the model list opens on the bundled model
        # gr.Examples: the bundled example images and the demo video, from the installed package
        assert "shapes_0.jpg" in str(config["components"]) and "demo_shapes.mp4" in str(config["components"])
        picture, payload = client.predict(
            handle_file(str(EXAMPLES / "shapes_0.jpg")), "", 0.25, 0.7, api_name="/detect"
        )
        assert payload["model"] == "dcnv3-yolov8n.pt" and payload["detections"], payload
        assert len(payload["deformable_layers"]) == 5 and Path(picture).is_file()
    assert any("is running at" in line for line in lines)
