"""In headless Chromium: one checkpoint of each fork family (tests/data/forks) opened in the app
shows its detections and the Sampling view of its DCNv3 layers; a checkpoint with an unknown
deformable class is refused with the loader's line. Fields, Health and Receptive field on every
layout are checked through the functions the app calls (tests/yolo/test_fork_layouts.py).

Needs /usr/bin/chromium; every request except the app's own is blocked.
"""

import shutil

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, served_app
from fakes import unknown_fork_checkpoint
from repo_paths import FORKS, ROOT

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")
BUS = ROOT / "assets" / "examples" / "bus.jpg"
# One per family, best.pt and last.pt both among them.
OPENED = {
    "jiangjh_v8_best.pt": "model.4.0.m.0.cv2.dcnv3",
    "extra_v8_last.pt": "model.4.m.0.cv2.dcnv3",
    "extra_v11_best.pt": "model.6.m.0.m.0.cv2.dcnv3",
}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from viz_app.state.models import ModelRegistry

    models = tmp_path_factory.mktemp("models")
    for name in OPENED:
        shutil.copy(FORKS / name, models / name)
    with served_app(ModelRegistry(models_dir=models, model=models / "jiangjh_v8_best.pt")) as url:
        with offline_page(url) as page:
            yield page


def _sampling_shows(page, layer: str) -> None:
    page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")
    page.locator("#sampling-plot .js-plotly-plot").wait_for()
    page.locator("#layer input").click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert sum(" · model." in text for text in options) == 5, options  # every DCNv3 layer listed
    assert any(text.endswith(layer) for text in options), (layer, options)


def test_each_fork_family_opens_in_the_sampling_view(page, tmp_path):
    page.set_input_files("#image-in input[type=file]", str(BUS))
    page.wait_for_selector("#overlay img")
    _sampling_shows(page, OPENED["jiangjh_v8_best.pt"])
    for name in ("extra_v8_last.pt", "extra_v11_best.pt"):
        old = page.locator("#sampling-info").inner_text()
        page.locator("#model input").click()
        page.get_by_role("option", name=name).click()
        page.wait_for_function("old => document.querySelector('#sampling-info').innerText !== old", arg=old)
        _sampling_shows(page, OPENED[name])

    # An unknown deformable layout: refused with the loader's message, the model stays.
    unknown = tmp_path / "foo_best.pt"
    unknown_fork_checkpoint(unknown)
    with page.expect_file_chooser() as chooser:
        page.locator("#checkpoint").click()
    chooser.value.set_files(str(unknown))
    page.wait_for_function("() => document.querySelector('#notices').innerText.includes('Checkpoint refused')")
    notice = page.locator("#notices").inner_text()
    assert "C3k2_Foo" in notice and "C3k2-shaped container" in notice and "FooConv" in notice, notice
    assert page.locator("#model input").input_value() == "extra_v11_best.pt"
