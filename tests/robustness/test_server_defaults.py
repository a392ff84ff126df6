"""Server defaults of ``python app.py``: loopback only, upload size limit, uploads and outputs removed
after ``--keep-files-minutes``, and a path or URL sent by a client never read.

One server for the module, started as users start it (a subprocess, TMPDIR pointed at a test folder
so its private upload folder and work folder can be watched).
"""

import json
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from serving import EXAMPLES, ROOT, app_process

import app as app_module
from viz_app.state.retention import delete_cache_setting, sweep

pytestmark = pytest.mark.server

KEEP_MINUTES = 0.1  # 6 s: files older than that are removed, checked every second
IMAGE = EXAMPLES / "shapes_0.jpg"


def test_defaults_bind_loopback_and_keep_files_a_day():
    args = app_module.parse_args([])
    assert args.host == "127.0.0.1" and args.max_upload_mb == 400 and args.keep_files_minutes == 1440
    assert delete_cache_setting(1440) == (3600, 86400)
    assert delete_cache_setting(KEEP_MINUTES) == (1, 6)
    with pytest.raises(SystemExit):
        app_module.parse_args(["--keep-files-minutes", "0"])


def test_sweep_removes_only_old_files_and_empty_folders(tmp_path):
    old, new = tmp_path / "a" / "old.png", tmp_path / "b" / "new.png"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"x")
    now = time.time()
    import os

    os.utime(old, (now - 100, now - 100))
    assert sweep(tmp_path, max_age_s=50, now=now) == 1
    assert not old.exists() and not old.parent.exists() and new.exists() and tmp_path.is_dir()
    assert sweep(tmp_path / "absent", 1) == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    temp = tmp_path_factory.mktemp("server_tmp")
    with app_process(
        "--max-upload-mb", "1", "--keep-files-minutes", str(KEEP_MINUTES), cwd=temp, env={"TMPDIR": str(temp)}
    ) as (process, url, lines):
        yield process, url, temp, lines


def _uploads(temp: Path) -> Path:
    (folder,) = temp.glob("deformlens_uploads_*")
    return folder


def _detect(url, image=IMAGE):
    return Client(url, verbose=False).predict(handle_file(str(image)), "", 0.25, 0.7, api_name="/detect")


def test_listens_on_loopback_only(server):
    process, _url, _, _ = server
    listening = [
        c.laddr for c in psutil.Process(process.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening


def test_uploads_over_the_limit_are_refused_and_the_server_goes_on(server, tmp_path):
    _, url, _, _ = server
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(2 * 2**20))
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert response.status_code == 413, response.text
    assert "big.png" not in {p.name for p in _uploads(server[2]).rglob("*")}
    assert _detect(url)[1]["detections"] is not None


def _call_with_raw_file(url: str, file_data: dict) -> str:
    """/detect over gradio's plain HTTP API with a FileData the client wrote itself (no upload):
    returns the event stream's text."""
    response = httpx.post(url + "gradio_api/call/detect", json={"data": [file_data, "", 0.25, 0.7, 0]}, timeout=60)
    response.raise_for_status()
    event = response.json()["event_id"]
    return httpx.get(url + f"gradio_api/call/detect/{event}", timeout=120).text


@pytest.mark.parametrize("kind", ["etc_passwd", "relative_escape", "repo_file", "temp_file", "url"])
def test_paths_sent_by_a_client_are_never_read(server, tmp_path, kind):
    _, url, temp, _ = server
    secret = temp / "not_uploaded.png"  # in the server's own temp folder, but never uploaded
    secret.write_bytes(IMAGE.read_bytes())
    path = {
        "etc_passwd": "/etc/passwd",
        "relative_escape": "../../../../../../etc/passwd",
        "repo_file": str(ROOT / "tests" / "data" / "fork_fixture" / "fork_A.pt"),
        "temp_file": str(secret),
        "url": "http://192.0.2.1/image.jpg",
    }[kind]  # TEST-NET-1: never routed
    stream = _call_with_raw_file(url, {"path": path, "meta": {"_type": "gradio.FileData"}})
    assert "event: error" in stream and "event: complete" not in stream, stream
    # gradio's own check (before any handler runs), or ours for URLs
    expected = "URLs are not fetched" if kind == "url" else "was not uploaded by a user"
    assert expected in stream, stream
    # nothing was copied into the server's folders from outside
    copied = {p.name for p in _uploads(temp).rglob("*") if p.is_file()}
    assert not copied & {"passwd", "fork_A.pt", "not_uploaded.png", "image.jpg"}
    assert _detect(url)[1]["image_size"] == [416, 416]


def test_uploads_and_outputs_are_removed_after_the_keep_time(server):
    _, url, temp, _ = server
    _picture, _ = _detect(url, EXAMPLES / "shapes_1.jpg")
    uploads = _uploads(temp)
    stored = [p for p in uploads.rglob("*") if p.is_file()]
    assert any(p.name == "shapes_1.jpg" for p in stored)
    deadline = time.time() + 6 + 20
    while time.time() < deadline and any(p.exists() for p in stored):
        time.sleep(1)
    assert not any(p.exists() for p in stored), [p for p in stored if p.exists()]
    work = [p for p in temp.glob("deformlens_*") if not p.name.startswith("deformlens_uploads_")]
    assert work and not any(p.is_file() for folder in work for p in folder.rglob("*"))
    assert _detect(url)[1]["image_size"] == [416, 416]  # still serving, on a fresh upload


def test_sigterm_stops_the_server_and_removes_its_folders(server):
    process, _, temp, lines = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, "".join(lines[-20:])
    assert not list(temp.glob("deformlens_*")), json.dumps([str(p) for p in temp.glob("deformlens_*")])
