"""Fuzzed checkpoints: truncated archives, pickles that reach for os, subprocess, eval/exec,
importlib or a module whose import runs code, nested reduce tricks and memory bombs, tensors
claiming huge sizes. Each is refused with a one-line reason, fast, without running anything from the
file, in the package, through an upload and through the running server, which keeps serving.

The pickles are written opcode by opcode (GLOBAL, MARK ... TUPLE, REDUCE), as an attacker would:
no object in this process has to be picklable for them to exist.
"""

import io
import struct
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from serving import EXAMPLES, FORK_A

from dcnv3.yolo.checkpoints import CheckpointError, UnsafeCheckpointError, safe_load
from dcnv3.yolo.loading import load_model
from viz_app.state.analyser import Analyser
from viz_app.state.models import ModelRegistry

PROTO = b"\x80\x02"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def as_checkpoint(value: bytes) -> bytes:
    """{"model": value} as a pickle."""
    return PROTO + b"}" + text("model") + value + b"s."


def hostile_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, what the refusal must name)."""
    touch = f"touch {marker}"
    return {
        "os_system": (as_checkpoint(call(glob("os", "system"), text(touch))), "os.system"),
        "posix_system": (as_checkpoint(call(glob("posix", "system"), text(touch))), "posix.system"),
        "subprocess": (
            as_checkpoint(call(glob("subprocess", "Popen"), b"(" + text("touch") + text(str(marker)) + b"l")),
            "subprocess.Popen",
        ),
        "eval": (as_checkpoint(call(glob("builtins", "eval"), text(f"open({str(marker)!r}, 'w')"))), "builtins.eval"),
        "exec_py2_name": (
            as_checkpoint(call(glob("__builtin__", "exec"), text(f"open({str(marker)!r}, 'w')"))),
            "builtins.exec",
        ),
        "importlib": (as_checkpoint(call(glob("importlib", "import_module"), text("os"))), "importlib.import_module"),
        "getattr_chain": (
            as_checkpoint(
                call(glob("builtins", "getattr"), call(glob("importlib", "import_module"), text("os")), text("system"))
            ),
            "builtins.getattr",
        ),
        # an allowed container rebuilder wrapping a forbidden call: refused at the inner global
        "nested_reduce": (
            as_checkpoint(call(glob("collections", "OrderedDict"), call(glob("os", "system"), text(touch)))),
            "os.system",
        ),
        # a module inside an allowed package whose import runs code (python -m dcnv3's CLI)
        "import_side_effect": (as_checkpoint(glob("dcnv3.__main__", "main")), "dcnv3.__main__.main"),
        "package_function": (
            as_checkpoint(call(glob("ultralytics.nn.tasks", "torch_safe_load"), text("x.pt"))),
            "ultralytics.nn.tasks.torch_safe_load",
        ),
        "module_constructor": (
            as_checkpoint(call(glob("ultralytics.nn.tasks", "DetectionModel"), text("x.yaml"))),
            "DetectionModel",
        ),
        # allowed callables asked for more than any file holds: refused before memory is touched
        "list_of_huge_range": (
            as_checkpoint(call(glob("builtins", "list"), call(glob("builtins", "range"), integer(10**12)))),
            "a range",
        ),
        "set_of_huge_range": (
            as_checkpoint(call(glob("__builtin__", "set"), call(glob("__builtin__", "xrange"), integer(10**10)))),
            "a range",
        ),
        "huge_bytes": (as_checkpoint(call(glob("builtins", "bytes"), integer(8 * 2**30))), "a bytes"),
        "huge_bytearray": (as_checkpoint(call(glob("builtins", "bytearray"), integer(10**12))), "a bytearray"),
    }


def torch_archives(folder: Path) -> dict[str, tuple[bytes, str]]:
    buffer = io.BytesIO()
    torch.save({"model": torch.zeros(3)}, buffer)
    archive = buffer.getvalue()
    buffer = io.BytesIO()
    # one stored float, a view claiming 10**12 of them: 4 TB as soon as anything copies it
    torch.save({"model": torch.zeros(1, dtype=torch.float16).expand(10**12)}, buffer)
    broadcast = buffer.getvalue()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as bundle:
        bundle.writestr("archive/data.pkl", hostile_pickles(folder / "pwned")["os_system"][0])
        bundle.writestr("archive/byteorder", "little")
        bundle.writestr("archive/version", "3\n")
    return {
        "truncated_zip": (archive[: len(archive) // 2], "not a readable PyTorch checkpoint"),
        "truncated_zip_end": (archive[:-20], "not a readable PyTorch checkpoint"),
        "zip_with_hostile_pickle": (zipped.getvalue(), "refused: .* 'os.system'"),
        "huge_view": (broadcast, "claims 1000000000000 elements but its storage holds 1"),
        "pickle_truncated": (hostile_pickles(folder / "pwned")["eval"][0][:12], "not a readable PyTorch checkpoint"),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzzed_checkpoints")
    cases = {**hostile_pickles(folder / "pwned"), **torch_archives(folder)}
    for name, (content, _) in cases.items():
        (folder / f"{name}.pt").write_bytes(content)
    return folder, {name: message for name, (_, message) in cases.items()}


CASES = sorted({**hostile_pickles(Path("x")), **torch_archives(Path("x"))})


@pytest.mark.parametrize("name", CASES)
def test_package_refuses_in_one_line_fast_and_runs_nothing(checkpoints, name):
    folder, messages = checkpoints
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=messages[name]) as error:
        load_model(folder / f"{name}.pt")
    assert time.perf_counter() - start < 5  # a memory bomb is refused, not attempted
    assert "\n" not in str(error.value)
    if name in hostile_pickles(folder) or name in ("huge_view", "zip_with_hostile_pickle"):
        assert isinstance(error.value, UnsafeCheckpointError)
    assert not (folder / "pwned").exists()
    assert "dcnv3.__main__" not in sys.modules  # the CLI module was never imported


def test_the_refusals_name_the_global_before_anything_is_called(checkpoints):
    folder, _ = checkpoints
    with pytest.raises(UnsafeCheckpointError, match=r"refused: the checkpoint references the global 'os\.system'"):
        safe_load(folder / "nested_reduce.pt")


def test_real_checkpoints_still_load_through_the_bounds():
    model = load_model(FORK_A)
    assert len(model.deformable_layers) == 5
    bundled = EXAMPLES.parent / "models" / "dcnv3-yolov8n.pt"
    if bundled.is_file():
        assert len(load_model(bundled).deformable_layers) > 0


@pytest.mark.parametrize("name", ["os_system", "import_side_effect", "huge_view", "truncated_zip"])
def test_upload_path_refuses_and_registers_nothing(checkpoints, tmp_path, name):
    folder, messages = checkpoints
    registry = ModelRegistry(bundled_dir=tmp_path)
    before = registry.names()
    with pytest.raises(CheckpointError, match=messages[name]):
        registry.add_upload(folder / f"{name}.pt")
    assert registry.names() == before
    assert not (folder / "pwned").exists()


def test_an_upload_that_was_cleaned_away_is_named_not_crashed_on(tmp_path):
    copy = tmp_path / "up" / "fork_A.pt"
    copy.parent.mkdir()
    copy.write_bytes(FORK_A.read_bytes())
    registry = ModelRegistry(bundled_dir=tmp_path / "none")
    name = registry.add_upload(copy)
    registry._loaded.clear()  # as after the LRU let it go
    copy.unlink()  # what --keep-files-minutes does to an old upload
    with pytest.raises(CheckpointError, match="the checkpoint file is gone"):
        registry.load(name)


@pytest.fixture(scope="module")
def server(checkpoints):
    """One in-process server offering every fuzzed checkpoint by name (its models folder)."""
    folder, _ = checkpoints
    registry = ModelRegistry(models_dir=folder, model=FORK_A)
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False)


@pytest.mark.parametrize("name", CASES)
def test_server_refuses_each_and_keeps_serving(server, checkpoints, tmp_path, name):
    folder, messages = checkpoints
    image = EXAMPLES / "shapes_0.jpg"
    with pytest.raises(AppError, match=messages[name]):
        server.predict(handle_file(str(image)), f"{name}.pt", 0.25, 0.7, api_name="/detect")
    assert not (folder / "pwned").exists()
    _, payload = server.predict(handle_file(str(image)), "fork_A.pt", 0.25, 0.7, api_name="/detect")
    assert payload["model"] == "fork_A.pt" and len(payload["deformable_layers"]) == 5
