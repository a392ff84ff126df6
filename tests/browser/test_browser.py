"""End to end in headless Chromium (the system browser, driven by Playwright): upload an image, wait
for the detections, click the picture, see the sampling overlay and the plot, switch layer and
group, look at the fields and health views, download an export.

Needs /usr/bin/chromium (``apt-get install -y chromium``); Playwright's own browser download
(``playwright install``) is never used. The page may only reach the app: every other request is
aborted, so the test also shows that the UI works offline. Set DEFORMLENS_SCREENSHOT=path.png to
save a screenshot of the page after the click (assets/screenshots/app.png comes from
tests/browser/test_browser_readme.py).
"""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from browser_support import NEEDS_CHROMIUM, image_src, offline_page, save_picture, served_app, wait_for_new_image
from fakes import RunsCommand
from repo_paths import FORK_A, ROOT

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")

BUS = ROOT / "assets" / "examples" / "bus.jpg"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from viz_app.state.models import ModelRegistry

    models = tmp_path_factory.mktemp("models")
    shutil.copy(FORK_A, models / "fork_A.pt")
    with served_app(ModelRegistry(models_dir=models, model=models / "fork_A.pt")) as url:  # default: fork_A
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with offline_page(app_url, accept_downloads=True) as page:
        yield page


def save_screenshot(page, path: Path) -> None:
    """The page in a taller window (``browser_support.save_picture``), then the window as before."""
    page.set_viewport_size({"width": 1600, "height": 1400})
    save_picture(page, path, full_page=False)
    page.set_viewport_size({"width": 1600, "height": 1000})


def test_hostile_checkpoint_upload_is_refused_in_the_ui(page, tmp_path):
    import torch

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": RunsCommand(f"touch {tmp_path / 'pwned'}")}, hostile)
    with page.expect_file_chooser() as chooser:
        page.locator("#checkpoint").click()
    chooser.value.set_files(str(hostile))
    page.wait_for_function("() => document.querySelector('#notices').innerText.includes('Checkpoint refused')")
    assert "references the global 'posix.system'" in page.locator("#notices").inner_text()
    assert page.locator("#model input").input_value() == "fork_A.pt"  # still the previous model
    assert not (tmp_path / "pwned").exists()


def test_upload_click_switch_and_export(page, tmp_path):
    # Upload: the model runs once, detections and the first sampling view appear.
    page.set_input_files("#image-in input[type=file]", str(BUS))
    page.wait_for_selector("#overlay img")
    page.wait_for_function("() => document.querySelector('#notices').innerText.includes('300 detections')")
    assert page.locator("#detection input").input_value().startswith("#1 ")
    info = page.locator("#sampling-info")
    page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")

    # Pick another detection: the view jumps to its centre, in the layer of its scale.
    old = image_src(page, "#overlay")
    page.locator("#detection input").click()
    page.get_by_role("option", name=re.compile(r"^#2 ")).click()
    wait_for_new_image(page, "#overlay", old)
    layer_name = page.locator("#layer input").input_value().rsplit(" · ", 1)[-1]
    page.wait_for_function("name => document.querySelector('#sampling-info').innerText.includes(name)", arg=layer_name)
    first_info = info.inner_text()

    # Click the picture: the overlay, the text and the interactive plot follow the clicked cell.
    overlay = page.locator("#overlay img")
    box = overlay.bounding_box()
    old = image_src(page, "#overlay")
    overlay.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.55})
    wait_for_new_image(page, "#overlay", old)  # the picture first; the text and figures follow it
    page.wait_for_function(
        """old => {
            const cell = /cell \\(row \\d+, col \\d+\\)/.exec(document.querySelector('#sampling-info').innerText);
            return cell && !old.includes(cell[0]);
        }""",
        arg=first_info,
    )
    text = info.inner_text()
    cell = tuple(map(int, re.search(r"cell \(row (\d+), col (\d+)\)", text).groups()))
    stride = int(re.search(r"P\d/(\d+)", text).group(1))
    # 30 % across and 55 % down the 810 x 1080 image (network input 480 x 640: a cell spans
    # stride * 810 / 480 image px): the clicked pixel's cell, within one cell for the browser's
    # rounding of the click position.
    cell_px = stride * 810 / 480
    assert abs(cell[1] - 0.3 * 810 / cell_px) <= 1.0 and abs(cell[0] - 0.55 * 1080 / cell_px) <= 1.0
    plot = page.locator("#sampling-plot .js-plotly-plot")
    plot.wait_for()
    assert page.locator("#sampling-plot .legendtext", has_text="group 0").count() == 1
    assert page.locator("#sampling-plot .scatterlayer .point").count() >= 9 + 9 + 1  # grid, samples, centre
    assert page.locator("#weights-plot .js-plotly-plot").count() == 1
    if os.environ.get("DEFORMLENS_SCREENSHOT"):
        save_screenshot(page, Path(os.environ["DEFORMLENS_SCREENSHOT"]))

    # Switch layer: the P5 layer, same point.
    old = image_src(page, "#overlay")
    page.locator("#layer input").click()
    page.get_by_role("option", name="P5/32 backbone").click()
    wait_for_new_image(page, "#overlay", old)
    page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('P5/32 backbone')")

    # Toggle the group off and on: its points leave and come back.
    group = page.locator("#groups").get_by_label("group 0")
    group.uncheck()
    page.wait_for_function("() => !document.querySelector('#sampling-plot').innerText.includes('group 0')")
    group.check()
    page.wait_for_function("() => document.querySelector('#sampling-plot').innerText.includes('group 0')")

    # Fields and health views render from the same probe.
    page.get_by_role("tab", name="Fields").click()
    page.wait_for_selector("#field-image img")
    old = image_src(page, "#field-image")
    page.locator("#field").get_by_label("weight entropy").check()
    wait_for_new_image(page, "#field-image", old)
    page.get_by_role("tab", name="Health").click()
    page.wait_for_function("() => document.querySelector('#health-table').innerText.includes('model.8.m.0.cv2.dcnv3')")

    # Export, and download the sampling points of the current selection.
    page.locator("#export").click()
    link = page.locator("#export-files a[download$='_sampling.json']")
    link.wait_for()
    names = [a.get_attribute("download") for a in page.locator("#export-files a[download]").all()]
    assert [Path(n).suffix for n in names] == [".png", ".npz", ".json", ".csv"]
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "points.json"
    download.value.save_as(saved)
    points = json.loads(saved.read_text())
    assert points["layer"] == "model.8.m.0.cv2.dcnv3" and points["stride"] == 32
    assert len(points["points"]) == 9 and points["groups_shown"] == [0]
