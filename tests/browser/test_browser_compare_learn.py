"""The receptive-field view, the Compare tab and the Learn toy, end to end in headless Chromium (the
system browser, driven by Playwright; see test_browser.py). The app offers the bundled models: the
DCNv3-YOLOv8n and its plain twin. Every request except the app's own is aborted, so the views
(KaTeX included) work offline.

Set DEFORMLENS_SCREENSHOT_DIR=folder to save a screenshot of each view.
"""

import re

import pytest
from browser_support import (
    NEEDS_CHROMIUM,
    image_src,
    offline_page,
    readme_screenshot,
    served_app,
    set_slider,
    wait_for_new_image,
    wait_text,
)
from repo_paths import ROOT

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")

SHAPES = ROOT / "assets" / "examples" / "shapes_0.jpg"


@pytest.fixture(scope="module")
def context():
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    return AppContext.create(ModelRegistry())


@pytest.fixture(scope="module")
def page(context):
    with served_app(context) as url, offline_page(url, height=1100, timeout_ms=90_000) as page:
        yield page


def test_receptive_field_view(page):
    page.set_input_files("#image-in input[type=file]", str(SHAPES))
    page.wait_for_selector("#overlay img")
    wait_text(page, "#sampling-info", "cell (row")
    page.get_by_role("tab", name="Receptive field").click()
    page.wait_for_selector("#erf-image img")
    wait_text(page, "#erf-info", "yolov8n.pt")
    info = page.locator("#erf-info").inner_text()
    assert "dcnv3-yolov8n.pt" in info and "50 % area ratio" in info
    areas = re.findall(r"50 % of the mass in ([\d,]+) px²", info)
    assert len(areas) == 2 and all(int(a.replace(",", "")) > 0 for a in areas)
    readme_screenshot(page, "receptive_field")

    # The detection target: the best detection's score, the twin read at the same anchor.
    old = image_src(page, "#erf-image")
    page.locator("#erf-target").get_by_label("score of the highlighted detection").check()
    wait_for_new_image(page, "#erf-image", old)
    wait_text(page, "#erf-info", "at anchor")


def test_compare_tab(page):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-from-image").click()  # the Image tab's picture (uploaded above)
    page.wait_for_selector("#compare-detections img")
    wait_text(page, "#compare-status", "yolov8n.pt")
    wait_text(page, "#compare-health-a", "model.4.m.0.cv2.dcnv3")
    wait_text(page, "#compare-health-b", "no deformable layer")
    page.wait_for_selector("#compare-erf img")
    wait_text(page, "#compare-erf-info", "ratio A / B")
    first = page.locator("#compare-erf-info").inner_text()
    # A click on the right-hand (model B) panel moves the receptive-field point there.
    old = image_src(page, "#compare-erf")
    picture = page.locator("#compare-detections img")
    box = picture.bounding_box()
    picture.click(position={"x": box["width"] * 0.8, "y": box["height"] * 0.8})
    wait_for_new_image(page, "#compare-erf", old)
    page.wait_for_function("old => document.querySelector('#compare-erf-info').innerText !== old", arg=first)
    readme_screenshot(page, "compare")


def test_learn_toy(page):
    page.get_by_role("tab", name="Learn").click()
    page.wait_for_selector("#learn-text .katex")  # the formula is typeset (KaTeX ships with gradio)
    page.wait_for_selector("#learn-toy img")
    wait_text(page, "#learn-info", "P4/16")
    before = page.locator("#learn-info").inner_text()
    old = image_src(page, "#learn-toy")
    number = page.locator("#learn-scale input[type=number]")
    number.fill("200")
    number.press("Enter")
    wait_for_new_image(page, "#learn-toy", old)
    page.wait_for_function("old => document.querySelector('#learn-info').innerText !== old", arg=before)
    old = image_src(page, "#learn-toy")
    rotate = page.locator("#learn-rotate input[type=number]")
    rotate.fill("45")
    rotate.press("Enter")
    wait_for_new_image(page, "#learn-toy", old)
    readme_screenshot(page, "learn")


def test_confidence_slider_answers_from_the_cached_run(page, context):
    """The bundled model finds 2 shapes in shapes_0.jpg at conf 0.25 (scores 0.91, 0.81), 1 at 0.9 and
    7 at 0.05: the detections and the overlay follow the slider, and the model does not run again."""
    page.get_by_role("tab", name="Image").first.click()
    runs = context.analyser.runs
    wait_text(page, "#notices", "2 detections")
    old = image_src(page, "#overlay")
    set_slider(page, "conf", 0.9)
    wait_text(page, "#notices", "1 detections")
    wait_for_new_image(page, "#overlay", old)
    set_slider(page, "conf", 0.05)
    wait_text(page, "#notices", "7 detections")
    assert page.locator("#detection input").input_value().startswith("#1 ")  # the best one stays highlighted
    wait_text(page, "#sampling-info", "cell (row")  # the view kept its point
    assert context.analyser.runs == runs
