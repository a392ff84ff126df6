"""The Sampling view's hover in the browser: pointer move -> the cell's points redrawn, and what a
layer costs to send.

    python benchmarks/bench_hover.py [--moves 200]

The app is served as ``python app.py`` (``bench_server_path.serve``; bundled dcnv3-yolov8n.pt,
CPU) and opened in headless Chromium (the system's /usr/bin/chromium, offline). On bus.jpg at the
model's training size and at imgsz 640, for the layer with the most cells (P3, stride 8) and the
one with the most points per cell (P5, G=8): ``--moves`` pointer moves over the picture, each to a
new random position, one per frame (Chromium coalesces the moves of one frame into one event).
The page's hover (viz_app/components/sampling_hover.js) records, per move: the time from the
pointer event (``event.timeStamp``) to the end of its drawing (points, grid rings, arrows and
cross on the canvas; Chromium delivers pointer moves aligned to animation frames, so this
includes up to a frame of waiting that is the browser's, not the drawing's); the handler's own
work; and the time to the next animation frame, when the browser paints. Medians and 95th
percentiles are printed; requests made while moving are counted (none are expected).

Bytes per layer: the float32 offsets and weights the browser fetches once per layer
(``viz_app.views.hover.array_bytes``; base64 adds a third on the wire).

Target: move -> drawn, median <= 16 ms (one frame at 60 Hz).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server_path import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402
from results import emit  # noqa: E402

IMGSZ_CHOICES = {"the model's training size": 0, "640": 640}
READY = "() => document.querySelector('#sampling-hover [data-ready]')?.dataset.ready"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def layer_sizes(imgsz: int) -> dict[str, tuple[str, int, int]]:
    """{layer name: (its label in the app's list, cells, bytes of its arrays)} for bus.jpg."""
    from viz_app.state.analyser import Analyser
    from viz_app.state.models import ModelRegistry
    from viz_app.views.hover import array_bytes
    from viz_app.views.render import layer_choice_label

    registry = ModelRegistry()
    bus = str(ROOT / "assets" / "examples" / "bus.jpg")
    analysis = Analyser(registry).analyse(bus, registry.default_name(), imgsz=imgsz or None)
    return {r.name: (layer_choice_label(r), r.grid[0] * r.grid[1], array_bytes(r)) for r in analysis.probe.layers}


def drawn_rect(page) -> dict:
    page.locator("#overlay img").scroll_into_view_if_needed()  # choosing in a list may have scrolled it away
    return page.wait_for_function(
        """() => {
        const img = document.querySelector('#overlay img');
        if (!img || !img.complete || !img.naturalWidth) return null;
        const box = img.getBoundingClientRect();
        const f = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
        const w = img.naturalWidth * f, h = img.naturalHeight * f;
        return {x: box.left + (box.width - w) / 2, y: box.top + (box.height - h) / 2, width: w, height: h};
    }"""
    ).json_value()


def choose(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=200, help="pointer moves per (size, layer)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows, rng = [], random.Random(0)
    with serve(ROOT) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(180_000)
        page.route(
            "**/*", lambda r: r.continue_() if r.request.url.startswith(("http://127.0.0.1", "data:")) else r.abort()
        )
        page.goto(url)
        page.set_input_files("#image-in input[type=file]", str(ROOT / "assets" / "examples" / "bus.jpg"))
        page.wait_for_selector("#overlay img")
        for size_label, imgsz in IMGSZ_CHOICES.items():
            sizes = layer_sizes(imgsz)
            print(f"bus.jpg at {size_label}: bytes per layer (float32 offsets + weights, before base64):")
            for name, (_, cells, count) in sizes.items():
                print(f"  {name:24s} {cells:5d} cells  {count / 1024:7.1f} KB")
            if imgsz:
                old = page.evaluate(READY)
                choose(page, "#imgsz", size_label)
                page.wait_for_function(f"old => ({READY})() && ({READY})() !== old || false", arg=old)
            most_cells = max(sizes, key=lambda n: sizes[n][1])
            most_points = min(sizes, key=lambda n: sizes[n][1])
            for name in dict.fromkeys([most_cells, most_points]):
                if page.evaluate(READY) != name:
                    choose(page, "#layer", sizes[name][0])
                page.wait_for_function(f"name => ({READY})() === name", arg=name)
                page.wait_for_timeout(500)
                rect = drawn_rect(page)
                requests = []

                def log(request, requests=requests):
                    requests.append(request)

                page.on("request", log)
                page.evaluate("() => { window.deformlensHoverTimings = []; }")
                for count in range(1, args.moves + 1):
                    page.mouse.move(
                        rect["x"] + rng.uniform(0.02, 0.98) * rect["width"],
                        rect["y"] + rng.uniform(0.02, 0.98) * rect["height"],
                    )
                    # One move at a time: moves within one frame would be coalesced into one event.
                    page.wait_for_function("n => window.deformlensHoverTimings.length >= n", arg=count, polling="raf")
                page.remove_listener("request", log)
                timings = page.evaluate("() => window.deformlensHoverTimings")
                work, drawn, frame = ([t[i] for t in timings] for i in range(3))
                print(
                    f"  {name} ({len(timings)} moves, {len(requests)} requests): move -> drawn median "
                    f"{statistics.median(drawn):.1f} ms, p95 {p95(drawn):.1f} ms (the handler's own work: median "
                    f"{statistics.median(work):.2f} ms, p95 {p95(work):.2f} ms); move -> next frame median "
                    f"{statistics.median(frame):.1f} ms, p95 {p95(frame):.1f} ms"
                )
                where = f"{name.split('.cv2')[0]}, imgsz {imgsz or 'train'}"
                rows.append((f"hover move -> drawn, median ms ({where})", statistics.median(drawn), "<= 16"))
                rows.append((f"hover move -> drawn, p95 ms ({where})", p95(drawn), None))
                rows.append((f"hover handler's own work, median ms ({where})", statistics.median(work), None))
                rows.append((f"hover move -> next frame, median ms ({where})", statistics.median(frame), None))
                rows.append((f"hover requests while moving ({where})", float(len(requests)), "<= 0"))
        browser.close()
    emit("hover", rows)


if __name__ == "__main__":
    main()
