"""The Training tab in headless Chromium: it opens the bundled demo run (assets/training_demo),
plots per-layer health over its epochs, and a click on the image shows the sampling strip, one
panel per saved epoch.

Set DEFORMLENS_SCREENSHOT_DIR=folder to save the screenshot (training.png).
"""

import re

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app, wait_text

from viz_app.tabs.training import DEMO_RUN
from viz_app.views.training_view import METRICS, open_run

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def page():
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    with (
        served_app(AppContext.create(ModelRegistry())) as url,
        offline_page(url, height=1300, timeout_ms=120_000) as page,
    ):
        yield page


def test_training_tab_plots_the_demo_run_and_shows_the_strip(page, report):
    run = open_run(DEMO_RUN)
    epochs = sorted({row["epoch"] for row in run.rows})
    assert len(run.layers) == 5 and len(epochs) >= 4 and len(run.checkpoints) == 3
    page.get_by_role("tab", name="Training").click()
    page.locator("#training-open").click()
    wait_text(page, "#training-info", f"health of 5 layers over epochs {epochs[0]}-{epochs[-1]}")
    page.wait_for_selector("#training-plot .js-plotly-plot")
    traces = page.evaluate(
        "() => document.querySelector('#training-plot .js-plotly-plot').data"
        ".filter(t => t.mode === 'lines+markers').map(t => [t.name, t.x.length])"
    )
    assert len(traces) == 5 * len(METRICS) and all(length == len(epochs) for _, length in traces), traces
    # Click the image's centre: a strip of one panel per saved epoch, the cell's offset per epoch.
    picture = page.locator("#training-image img")
    box = picture.bounding_box()
    picture.click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
    page.wait_for_selector("#training-strip img")
    wait_text(page, "#training-strip-info", "mean |offset|")
    text = page.locator("#training-strip-info").inner_text()
    saved = [epoch for epoch, _ in run.checkpoints]
    offsets = [float(v) for v in re.findall(r"mean \|offset\| ([\d.]+) cells", text)]
    assert [int(e) for e in re.findall(r"epoch (\d+):", text)] == saved and len(offsets) == len(saved), text
    size = page.evaluate(
        "() => { const i = document.querySelector('#training-strip img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size[0] == 3 * 220 and size[1] == 220 + 28, size
    report(
        "browser, Training tab on the demo run: "
        + ", ".join(f"epoch {e} {o:.3f}" for e, o in zip(saved, offsets))
        + " cells mean |offset| at the image centre's cell of "
        + page.locator("#training-layer input").input_value()
    )
    page.locator("#training-strip").scroll_into_view_if_needed()
    readme_screenshot(page, "training")
