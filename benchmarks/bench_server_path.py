"""What the server path costs once an image's run is cached: the HTTP API and a click in the browser,
for one checkout or two side by side (a "before" and an "after").

    python benchmarks/bench_server_path.py [--repo PATH] [--before PATH] [--rounds 6] [--clicks 10]
                                           [--no-browser]

Each checkout is served as ``python app.py --port P`` (its own process, started from that checkout
with this interpreter, offline); model: the bundled dcnv3-yolov8n.pt; imgsz 640; CPU. To compare
with an older commit, check it out beside this one (``git worktree add /tmp/before 1354a15``), pass
``--before /tmp/before`` and remove the worktree afterwards (``git worktree remove /tmp/before``).

* API, through ``gradio_client`` (as a user's script calls it; one Client per server, reused):
  ``/detect`` first run (a fresh image each round: bus.jpg with one pixel changed, re-encoded as a
  JPEG, so its content hash is new and the model runs); ``/detect`` again on that image at a new
  confidence (the run is cached: NMS, drawing, encoding, the transfer); ``/sampling`` on it at a new
  point. Ratios: median cached call / median first run, per checkout. The servers take turns call
  by call, so both see the same load.
* Click -> picture changed, in headless Chromium (the system's /usr/bin/chromium, offline): the
  Image tab's Sampling view, after the upload's run; a click on the picture, each at another cell,
  until ``#overlay img`` shows a new ``src``. Median and p95 over ``--clicks`` clicks, on bus.jpg
  (810 x 1080) and on a 256 px photo (bus.jpg resized to 256 px on its long side); the two
  checkouts' pages take turns click by click.

Targets: ``/detect`` at a new confidence and ``/sampling`` at a new point, each <= 0.5x a first run
(the run, i.e. the model, is what a cached call must not pay for; this 2-core machine's timings
vary by 10-30 % from run to run, hence the interleaving and the medians). Click times have no
target: the rows say after / before.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
OFFLINE = {"YOLO_OFFLINE": "true", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
os.environ.update(OFFLINE)

from results import emit  # noqa: E402

IMGSZ = 640
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(repo: Path, timeout: float = 240):
    """``python app.py --port P`` from ``repo``; yields its URL once it says it is running."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(repo / "app.py"), "--port", str(port)],
        cwd=repo,
        env={**os.environ, **OFFLINE, "PYTHONPATH": str(repo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "is running at" in line:
                break
        if not any("is running at" in line for line in lines):
            raise RuntimeError(f"{repo}/app.py did not start:\n" + "".join(lines[-30:]))
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()  # never block it
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def fresh_bus(folder: Path, index: int) -> Path:
    """bus.jpg with one pixel changed (a JPEG again): new content hash, same picture for the model."""
    import cv2
    from ultralytics.utils import ASSETS

    image = cv2.imread(str(Path(ASSETS) / "bus.jpg"))
    image[0, 0] = (index * 37) % 256, (index * 11) % 256, (index * 5) % 256
    path = folder / f"bus_{index}.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def small_photo(folder: Path) -> Path:
    """bus.jpg resized to 256 px on its long side."""
    import cv2
    from ultralytics.utils import ASSETS

    image = cv2.imread(str(Path(ASSETS) / "bus.jpg"))
    factor = 256 / max(image.shape[:2])
    small = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)), cv2.INTER_AREA)
    path = folder / "bus_256.jpg"
    cv2.imwrite(str(path), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


# gradio_client as a script makes it, and with ``ssl_verify=False``: the client builds an httpx client
# for each of a call's requests (upload, queue, events, download) and with verification on it loads
# the CA bundle into a new SSL context each time, ~15 ms a request, even for a plain http:// URL
# where no certificate is ever checked. Both are measured; the difference is the client's alone.
CLIENTS = {"default": {}, "ssl_verify=False": {"ssl_verify": False}}


def api_rounds(urls: dict[str, str], folder: Path, rounds: int) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Seconds per call kind per (checkout, client): first /detect, /detect at a new conf, /sampling at a new point."""
    from gradio_client import Client, handle_file

    clients = {
        (name, kind): Client(url, verbose=False, **options)
        for name, url in urls.items()
        for kind, options in CLIENTS.items()
    }
    times = {key: {"first": [], "conf": [], "sampling": []} for key in clients}
    for client in clients.values():  # warm up: the model loaded, the first request's imports done
        client.predict(handle_file(str(fresh_bus(folder, 10_000))), "", 0.25, 0.7, IMGSZ, api_name="/detect")
    for round_ in range(rounds):
        for index, (name, client) in enumerate(clients.items()):
            image = handle_file(str(fresh_bus(folder, 1 + round_ * len(clients) + index)))
            seconds, (_, payload) = timed(
                lambda: client.predict(image, "", 0.25, 0.7, IMGSZ, api_name="/detect")  # noqa: B023
            )
            times[name]["first"].append(seconds)
            layer = payload["deformable_layers"][0]["name"]
            conf = 0.3 + round_ / 100
            times[name]["conf"].append(
                timed(lambda: client.predict(image, "", conf, 0.7, IMGSZ, api_name="/detect"))[0]  # noqa: B023
            )
            x, y = 150 + 60 * round_, 300 + 40 * round_
            times[name]["sampling"].append(
                timed(lambda: client.predict(image, "", layer, x, y, IMGSZ, api_name="/sampling"))[0]  # noqa: B023
            )
    return times


def click_times(urls: dict[str, str], images: dict[str, Path], clicks: int) -> dict[tuple[str, str], list[float]]:
    """Seconds from a click on the Sampling view's picture to a new ``#overlay img`` src, per (checkout, image)."""
    from playwright.sync_api import sync_playwright

    times: dict[tuple[str, str], list[float]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = {}
        for name, url in urls.items():
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(120_000)
            page.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else route.abort()
                ),
            )
            page.goto(url)
            pages[name] = page
        for label, image in images.items():
            for page in pages.values():
                shown = page.locator("#overlay img")
                old = shown.first.get_attribute("src") if shown.count() else ""
                page.set_input_files("#image-in input[type=file]", str(image))
                page.wait_for_function(
                    "old => { const i = document.querySelector('#overlay img'); return i && i.src && i.src !== old; }",
                    arg=old,
                )
                page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")
                page.wait_for_timeout(1000)  # the upload's other outputs settle
            for i in range(clicks + 1):  # the first click of each page is a warm-up, not counted
                for name, page in pages.items():
                    overlay = page.locator("#overlay img").first
                    box = overlay.bounding_box()
                    old = overlay.get_attribute("src")
                    # Alternate halves, so every click lands in another cell of any layer.
                    position = {"x": box["width"] * (0.15 + 0.7 * (i % 2)), "y": box["height"] * (0.1 + 0.07 * i)}
                    start = time.perf_counter()
                    overlay.click(position=position)
                    page.wait_for_function(
                        "old => { const i = document.querySelector('#overlay img'); return i && i.src !== old; }",
                        arg=old,
                        polling="raf",
                    )
                    if i:
                        times.setdefault((name, label), []).append(time.perf_counter() - start)
                    page.wait_for_timeout(300)  # the click's other outputs (figures, trace) settle
        browser.close()
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout measured (default: this one)")
    parser.add_argument("--before", type=Path, help="a second checkout to measure beside it (e.g. a worktree)")
    parser.add_argument("--rounds", type=int, default=6, help="API rounds (a fresh image each)")
    parser.add_argument("--clicks", type=int, default=10, help="clicks per page and image")
    parser.add_argument("--no-browser", action="store_true", help="the API rows only")
    args = parser.parse_args()
    checkouts = {"after": args.repo.resolve()}
    if args.before:
        checkouts = {"before": args.before.resolve(), **checkouts}
    rows = []
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        folder = Path(temporary)
        urls = {name: stack.enter_context(serve(path)) for name, path in checkouts.items()}
        api = api_rounds(urls, folder, args.rounds)
        print(f"API through gradio_client, imgsz {IMGSZ}, bus.jpg, {args.rounds} rounds (median ms):")
        for (name, kind), times in api.items():
            first = statistics.median(times["first"])
            conf, sampling = statistics.median(times["conf"]), statistics.median(times["sampling"])
            print(
                f"  {name:6s} client {kind:16s} ({checkouts[name]}): first /detect {first * 1e3:.0f}; "
                f"/detect new conf {conf * 1e3:.0f} ({conf / first:.2f}x); /sampling new point "
                f"{sampling * 1e3:.0f} ({sampling / first:.2f}x)"
            )
            target = "<= 0.5" if name == "after" else None
            where = f"{name}, client {kind}"
            rows.append((f"API /detect at a new conf on a cached image / first run ({where})", conf / first, target))
            rows.append(
                (f"API /sampling at a new point on a cached image / first run ({where})", sampling / first, target)
            )
        if not args.no_browser:
            from ultralytics.utils import ASSETS

            images = {"bus.jpg": Path(ASSETS) / "bus.jpg", "256 px photo": small_photo(folder)}
            clicks = click_times(urls, images, args.clicks)
            print(f"click -> picture changed, headless Chromium, {args.clicks} clicks (ms):")
            for (name, label), times in clicks.items():
                median = statistics.median(times)
                print(f"  {name:6s} {label:13s} median {median * 1e3:.0f}, p95 {p95(times) * 1e3:.0f}")
            if "before" in checkouts:
                for label in images:
                    ratio = statistics.median(clicks[("after", label)]) / statistics.median(clicks[("before", label)])
                    rows.append((f"click -> picture changed, after / before, {label} (median)", ratio, None))
    emit("server_path", rows)


if __name__ == "__main__":
    main()
