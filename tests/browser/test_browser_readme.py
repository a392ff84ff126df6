"""In headless Chromium, the app as the README's first picture shows it: the bundled DCNv3-YOLOv8n
(the default model) on a generated scene, its first detection picked, the Sampling view of the
P4 layer with its four groups. Set DEFORMLENS_SCREENSHOT_DIR=folder to save the page (the
README's assets/screenshots/app.png).

Needs /usr/bin/chromium; every request except the app's own is blocked.
"""

import re

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app
from repo_paths import EXAMPLES

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")
SCENE = EXAMPLES / "shapes_2.jpg"


def test_bundled_model_on_a_scene():
    from viz_app.state.models import ModelRegistry

    with served_app(ModelRegistry()) as url, offline_page(url, height=1300) as page:
        heading = page.locator("h2").first.inner_text()
        assert "deformable layers (DCNv2, DCNv3, DCNv4)" in heading, heading
        assert page.locator("#model input").input_value() == "dcnv3-yolov8n.pt"
        page.set_input_files("#image-in input[type=file]", str(SCENE))
        page.wait_for_function(
            "() => /\\d+ detections, 5 DCNv3 layers/.test(document.querySelector('#notices').innerText)"
        )
        page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")
        # The first detection's centre, in the layer of its scale; every group of that layer shown.
        assert page.locator("#detection input").input_value().startswith("#1 ")
        layer = page.locator("#layer input").input_value()
        groups = int(re.search(r"G=(\d+)", layer).group(1))
        assert groups > 1 and page.locator("#groups input[type=checkbox]").count() == groups
        page.locator("#sampling-plot .js-plotly-plot").wait_for()
        assert page.locator("#sampling-plot .legendtext", has_text=f"group {groups - 1}").count() == 1
        readme_screenshot(page, "app", full_page=False)
