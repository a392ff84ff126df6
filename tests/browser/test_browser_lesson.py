"""The Learn tab's lesson network in headless Chromium: the scale slider across its range, the
effective dilation read back from the view rising with it; screenshots of a small and a large
setting; "watch it learn" run to its end and stopped part way.

Set DEFORMLENS_SCREENSHOT_DIR=folder to save the screenshots (lesson_small.png, lesson_large.png,
watch_learn.png).
"""

import itertools
import re

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app, set_slider, wait_text

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")

SCALES = (12, 24, 48, 96, 150)


@pytest.fixture(scope="module")
def page():
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    with (
        served_app(AppContext.create(ModelRegistry())) as url,
        offline_page(url, height=1100, timeout_ms=90_000) as page,
    ):
        yield page


def dilation(page) -> float:
    match = re.search(r"effective dilation ([\d.]+) cells", page.locator("#lesson-info").inner_text())
    assert match, page.locator("#lesson-info").inner_text()
    return float(match.group(1))


def test_dilation_rises_with_the_scale_slider(page, report):
    page.get_by_role("tab", name="Learn").click()
    wait_text(page, "#lesson-info", "effective dilation")
    page.wait_for_selector("#lesson-plot .js-plotly-plot")
    values = []
    for scale in SCALES:
        set_slider(page, "lesson-scale", scale)
        wait_text(page, "#lesson-info", f"A {scale} px bar")
        values.append(dilation(page))
        if scale == SCALES[0]:
            page.locator("#lesson-toy").scroll_into_view_if_needed()
            readme_screenshot(page, "lesson_small")
    readme_screenshot(page, "lesson_large")
    report(
        "browser, lesson network, bar at 30 degrees: effective dilation at the centre by scale "
        + ", ".join(f"{s} px {v:.2f}" for s, v in zip(SCALES, values))
        + " cells"
    )
    # Monotone within noise: no step down by more than 0.2 cells, and clearly wider at 150 px than at 12.
    assert all(b > a - 0.2 for a, b in itertools.pairwise(values)), values
    assert values[-1] > values[0] + 0.5, values


def test_watch_it_learn_runs_and_stops(page):
    set_slider(page, "watch-iterations", 20)
    page.locator("#watch-start").click()
    wait_text(page, "#watch-info", "Iteration 20/20")
    text = page.locator("#watch-info").inner_text()
    offset = float(re.search(r"at the watched pixel ([\d.]+) cells", text).group(1))
    assert offset > 0.1
    page.locator("#watch-picture").scroll_into_view_if_needed()
    readme_screenshot(page, "watch_learn")
    set_slider(page, "watch-iterations", 150)
    page.locator("#watch-start").click()
    wait_text(page, "#watch-info", "/150")
    page.locator("#watch-stop").click()
    page.wait_for_timeout(4000)
    stopped = page.locator("#watch-info").inner_text()
    page.wait_for_timeout(3000)
    assert page.locator("#watch-info").inner_text() == stopped and "150/150" not in stopped
