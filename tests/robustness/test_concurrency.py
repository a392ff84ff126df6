"""Eight users at once: each its own gradio_client session, mixing /detect, /sampling and /video on
different inputs. Every answer must equal the answer the same call got alone (no cross-talk between
sessions), and the server's memory must stay bounded.

The server is ``python app.py`` itself (its queue settings, its process: the RSS measured is the
server's alone). Answers are compared on their JSON payloads (detections, sampling points, video
statistics), which are exact functions of (input, model, arguments).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from serving import EXAMPLES, ROOT, app_process

pytestmark = pytest.mark.server

USERS = 8
DEMO_VIDEO = ROOT / "assets" / "demo_shapes.mp4"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Example photos, two synthetic scenes and, where the video endpoint exists, the demo video."""
    folder = tmp_path_factory.mktemp("concurrency")
    rng = np.random.default_rng(1)
    for index in range(2):
        scene = np.full((240, 320, 3), 90 + 60 * index, np.uint8)
        for _ in range(6):
            centre = tuple(int(v) for v in rng.integers(30, 210, 2))
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(scene, centre, int(rng.integers(10, 40)), colour, -1)
        cv2.imwrite(str(folder / f"synthetic_{index}.png"), scene)
    images = [EXAMPLES / name for name in ("shapes_0.jpg", "shapes_1.jpg", "shapes_2.jpg", "bus.jpg")]
    return images + sorted(folder.glob("synthetic_*.png"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    temp = tmp_path_factory.mktemp("server_tmp")
    with app_process(cwd=temp, env={"TMPDIR": str(temp)}) as (process, url, _):
        yield psutil.Process(process.pid), url


def _has_video(url) -> bool:
    endpoints = Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    return "/video" in endpoints and DEMO_VIDEO.is_file()


def _calls(url, images) -> list[tuple]:
    """(endpoint, arguments) for each job; every user gets a different mix."""
    layer = "model.6.m.0.cv2.dcnv3"
    calls = []
    for index, image in enumerate(images):
        calls.append(("/detect", (str(image), "", 0.25, 0.7)))
        calls.append(("/detect", (str(image), "", 0.4, 0.5)))
        calls.append(("/sampling", (str(image), "", layer, 10.5 + 7 * index, 20.5 + 5 * index)))
    if _has_video(url):
        calls += [("/video", (str(DEMO_VIDEO), "", "auto", 3)), ("/video", (str(DEMO_VIDEO), "", layer, 2))]
    return calls


# Wall-clock measurements in /video's statistics: they differ between any two runs, alone or not.
TIMINGS = {"seconds", "processed_fps"}


def _call(client: Client, endpoint: str, args: tuple):
    path, *rest = args
    _, payload = client.predict(handle_file(path), *rest, api_name=endpoint)
    return {key: value for key, value in payload.items() if key not in TIMINGS}


def test_eight_sessions_get_exactly_their_single_user_answers(server, inputs, report):
    process, url = server
    calls = _calls(url, inputs)
    alone = Client(url, verbose=False)
    expected = {i: _call(alone, *call) for i, call in enumerate(calls)}  # one user, one call at a time
    rss_before = process.memory_info().rss

    peak = [rss_before]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], process.memory_info().rss)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def user(number: int) -> list[tuple[int, object]]:
        client = Client(url, verbose=False)  # its own session
        order = np.random.default_rng(number).permutation(len(calls))[: max(6, len(calls) // 2)]
        return [(int(i), _call(client, *calls[i])) for i in order]

    with ThreadPoolExecutor(USERS) as pool:
        answers = [answer for result in pool.map(user, range(USERS)) for answer in result]
    stop.set()
    watcher.join(timeout=5)
    rss_after = process.memory_info().rss
    mismatched = [
        (calls[i], sorted(k for k in payload if payload[k] != expected[i].get(k)))
        for i, payload in answers
        if payload != expected[i]
    ]
    assert not mismatched, mismatched
    assert len(answers) >= USERS * 6
    # Requests queue (one model run at a time), so eight users cost little more than one: the
    # caches (a few probes, models) grow, the per-request working set does not multiply by eight.
    growth = (peak[0] - rss_before) / 2**20
    report(
        f"concurrency: {len(answers)} calls from {USERS} sessions, server RSS {rss_before / 2**20:.0f} MiB "
        f"before, peak {peak[0] / 2**20:.0f} MiB, after {rss_after / 2**20:.0f} MiB"
    )
    assert growth < 1500, f"server RSS grew by {growth:.0f} MiB under {USERS} users"
