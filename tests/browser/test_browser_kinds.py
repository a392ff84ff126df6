"""In headless Chromium: a DCNv2 and a DCNv4 fork checkpoint (tests/data/forks/dcnv2,
tests/data/forks/extra_v11_dcnv4) opened in the app, each with the encodings and legends of its
weight kind: the layer list, the text under the picture, the zoom's title and marks (open circles
for DCNv4's negative weights, as many as the probe has at that cell) and the weight matrices'
title. Set DEFORMLENS_SCREENSHOT_DIR=folder to save the two pages (the README's kinds_dcnv2.png,
kinds_dcnv4.png).

Needs /usr/bin/chromium; every request except the app's own is blocked.
"""

import re
import shutil

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app
from repo_paths import ROOT

from dcnv3.record.weight_encoding import KIND_NAMES, encode_weights

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")
BUS = ROOT / "assets" / "examples" / "bus.jpg"
FORKS = ROOT / "tests" / "data" / "forks"
CHECKPOINTS = {
    "sigmoid": FORKS / "dcnv2" / "extra_dcnv2_v8_best.pt",
    "free": FORKS / "extra_v11_dcnv4" / "extra_v11_dcnv4_best.pt",
}
# What the text under the picture says for each kind (weight_encoding.legend_lines, first and last words).
LEGEND_WORDS = {
    "sigmoid": [
        "weights sigmoid (DCNv2): each weight in [0, 1] on its own",
        "the weight itself (1 = fully on, the largest)",
    ],
    "free": ["weights free (DCNv4): signed and unbounded", "hollow rings: negative weights"],
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    models = tmp_path_factory.mktemp("models")
    for path in CHECKPOINTS.values():
        shutil.copy(path, models / path.name)
    context = AppContext.create(ModelRegistry(models_dir=models, model=models / CHECKPOINTS["sigmoid"].name))
    with served_app(context) as url:
        with offline_page(url, height=1400) as page:
            yield context, page


def _shows_kind(context, page, kind: str) -> None:
    """The Sampling view of the open checkpoint names ``kind`` everywhere it draws weights."""
    page.wait_for_function(
        "words => document.querySelector('#sampling-info').innerText.includes(words)", arg=LEGEND_WORDS[kind][0]
    )
    info = page.locator("#sampling-info").inner_text()
    assert all(words in info for words in LEGEND_WORDS[kind]), info
    page.locator("#layer input").click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    layers = [text for text in options if " · model." in text]
    assert len(layers) == 5 and all(f"· {kind} weights ·" in text for text in layers), options
    page.locator("#sampling-plot .js-plotly-plot").wait_for()
    page.locator("#weights-plot .js-plotly-plot").wait_for()
    zoom_title = page.locator("#sampling-plot .gtitle").text_content()
    assert KIND_NAMES[kind] in zoom_title, zoom_title
    matrices_title = page.locator("#weights-plot .gtitle").text_content()
    assert KIND_NAMES[kind] in matrices_title, matrices_title

    # The marks: open circles are the regular grid's rings (G x P) plus, for free weights, one per
    # negative weight at the cell the app shows (the same probe, from the app's own analyser).
    cell = tuple(map(int, re.search(r"cell \(row (\d+), col (\d+)\)", info).groups()))
    layer = page.locator("#layer input").input_value().rsplit(" · ", 1)[-1]
    model_name = page.locator("#model input").input_value()
    record = context.analyser.analyse(str(BUS), model_name).probe.layer(layer)
    negatives = int(encode_weights(record.weights[cell], record.weight_kind).negative.sum())
    open_marks = page.evaluate("""() => [...document.querySelectorAll('#sampling-plot .scatterlayer .point')]
        .filter(p => getComputedStyle(p).fill === 'none').length""")
    assert open_marks == record.groups * record.points + negatives, (open_marks, negatives)
    if kind == "free":
        assert negatives > 0  # the fixture's signed scalars: some negative at the shown cell
        assert page.locator("#sampling-plot .legendtext", has_text="hollow: negative weight").count() == 1
    else:
        assert negatives == 0


def test_dcnv2_and_dcnv4_checkpoints_show_their_weight_kind(app):
    context, page = app
    page.set_input_files("#image-in input[type=file]", str(BUS))
    page.wait_for_selector("#overlay img")
    page.wait_for_function("() => document.querySelector('#sampling-info').innerText.includes('cell (row')")
    # The fixtures' made-up weights score hundreds of boxes near 1: confidence 1 hides them, so the
    # pictures show the samples (the detections are test_browser_forks.py's business).
    old = page.locator("#notices").inner_text()
    box = page.locator("#conf input[type=number]")
    box.fill("1")
    box.press("Enter")
    box.blur()
    page.wait_for_function("old => document.querySelector('#notices').innerText !== old", arg=old)
    _shows_kind(context, page, "sigmoid")
    readme_screenshot(page, "kinds_dcnv2")
    old = page.locator("#sampling-info").inner_text()
    page.locator("#model input").click()
    page.get_by_role("option", name=CHECKPOINTS["free"].name).click()
    page.wait_for_function("old => document.querySelector('#sampling-info').innerText !== old", arg=old)
    _shows_kind(context, page, "free")
    readme_screenshot(page, "kinds_dcnv4")
