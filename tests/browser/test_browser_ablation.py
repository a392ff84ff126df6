"""The Ablation view in headless Chromium: upload an image, open the view, read its table and summary,
pick another rerun and see its picture change. Set DEFORMLENS_SCREENSHOT_DIR=folder to save
``ablation.png`` of the page (that is how assets/screenshots/ablation.png is made)."""

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app, wait_text

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")
from repo_paths import EXAMPLES  # noqa: E402

SHAPES = EXAMPLES / "shapes_0.jpg"


@pytest.fixture(scope="module")
def page():
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    with (
        served_app(AppContext.create(ModelRegistry())) as url,
        offline_page(url, height=1400, timeout_ms=120_000) as page,
    ):
        yield page


def test_ablation_view(page):
    page.set_input_files("#image-in input[type=file]", str(SHAPES))
    page.wait_for_selector("#overlay img")
    page.get_by_role("tab", name="Ablation").click()
    page.wait_for_selector("#ablation-image img")
    # The rerun that changes the detections most is shown first: the first P3 layer on its grid gains a box.
    wait_text(page, "#ablation-info", "model.4.m.0.cv2.dcnv3 · grid")
    assert "2 kept, 0 lost; 1 gained" in page.locator("#ablation-info").inner_text()
    table = page.locator("#ablation-table").inner_text()
    assert table.count("all layers") == 2 and "-0.345" in table  # all layers on the grid: mean score change
    first = page.locator("#ablation-image img").get_attribute("src")

    page.locator("#ablation-variant input").click()
    page.get_by_role("option", name="all layers · grid").click()
    wait_text(page, "#ablation-info", "all layers · grid")
    page.wait_for_function("old => document.querySelector('#ablation-image img').src !== old", arg=first)
    assert "mean IoU 0.860" in page.locator("#ablation-info").inner_text()

    page.locator("#tab-ablation").scroll_into_view_if_needed()
    readme_screenshot(page, "ablation")
