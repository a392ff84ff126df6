"""The Video tab end to end in headless Chromium (the system browser, driven by Playwright): upload the
demo video, process it, the output <video> plays (readyState >= 2, no error, the expected duration),
the time series renders, and the frame inspector opens a frame in the Image tab's views.

Needs /usr/bin/chromium; every request except the app's own is aborted. Set
DEFORMLENS_VIDEO_SCREENSHOT=path.png to save a screenshot of the processed Video tab.
"""

import os
import shutil

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, served_app, set_slider
from repo_paths import ROOT

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")

DEMO = ROOT / "assets" / "demo_shapes.mp4"
MODEL = ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from viz_app.state.models import ModelRegistry

    models = tmp_path_factory.mktemp("models")
    shutil.copy(MODEL, models / "dcnv3-yolov8n.pt")
    with served_app(ModelRegistry(models_dir=models, bundled_dir=models)) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with offline_page(
        app_url, height=1100, timeout_ms=120_000, extra_args=["--autoplay-policy=no-user-gesture-required"]
    ) as page:
        yield page


def test_process_demo_video_play_plot_and_inspect(page):
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#video-in input[type=file]", str(DEMO))
    page.wait_for_selector("#video-in video")
    set_slider(page, "video-stride", 3)  # 60 of the 180 frames: quick, and the output still lasts 12 s
    page.locator("#video-run").click()

    # A live preview shows while it runs; at the end the output video, the plot and the table.
    page.wait_for_selector("#video-preview img")
    page.wait_for_selector("#video-out video[src]")
    state = page.wait_for_function(
        """() => {
        const v = document.querySelector('#video-out video');
        if (!v || v.error) return v && v.error ? {error: v.error.code} : null;
        if (v.readyState < 2) { v.muted = true; v.play().catch(() => {}); return null; }
        return {ready: v.readyState, duration: v.duration, error: v.error};
    }""",
        polling=250,
    ).json_value()
    assert state.get("error") is None and state["ready"] >= 2
    assert abs(state["duration"] - 12.0) < 0.3  # 60 frames at 15 / 3 fps
    plot = page.locator("#video-plot .js-plotly-plot")
    plot.wait_for()
    assert page.locator("#video-plot .scatterlayer .trace").count() >= 4  # >= one track x four panels
    assert "size (px)" in page.locator("#video-plot").inner_text()
    page.wait_for_function("() => document.querySelector('#video-tracks').innerText.includes('eff. dilation')")
    page.wait_for_function("() => document.querySelector('#video-status').innerText.includes('60 frames processed')")
    page.wait_for_selector("#video-csv a[download$='_stats.csv']")
    if os.environ.get("DEFORMLENS_VIDEO_SCREENSHOT"):
        page.wait_for_timeout(500)
        page.screenshot(path=os.environ["DEFORMLENS_VIDEO_SCREENSHOT"], full_page=True)

    # Frame inspector: frame 30 opens in the Image tab, whose sampling view renders from it.
    set_slider(page, "video-frame", 30)
    page.locator("#video-inspect").click()
    page.wait_for_selector("#overlay img")
    page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")
    assert "demo_shapes_frame000030" in page.locator("#image-in img").first.get_attribute("src")
