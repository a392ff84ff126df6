"""In headless Chromium: the Sampling view's hover draws, in the browser, exactly the points that
``/sampling`` returns, for every layer of three models with the three weight kinds (the bundled
DCNv3 model: softmax; a DCNv2 fork fixture: sigmoid; the DCNv4 fork fixture: free, with negative
weights), and makes no request while the pointer moves.

For each layer: 50 pointer positions over the picture (seeded); after each move the hover surface
(``data-deformlens="sampling-hover"``) says the layer, the position in original-image px
(``data-xy``) and the points it drew (``data-points``); ``/sampling`` at that ``data-xy``, called
through gradio_client, must give the same cell, positions within 0.01 px and weights within 1e-3
(the browser computes in float64 from the record's own float32 arrays, so the positions agree to
a float64 rounding and the weights exactly; the bounds are the issue's). Set
DEFORMLENS_SCREENSHOT_DIR=folder to save the page while hovering (docs' hover.png).

Needs /usr/bin/chromium; every request except the app's own is blocked.
"""

import json
import random
import shutil

import pytest
from browser_support import NEEDS_CHROMIUM, offline_page, readme_screenshot, served_app
from repo_paths import BUNDLED_DCNV3, FORKS, ROOT

pytestmark = NEEDS_CHROMIUM
pytest.importorskip("playwright.sync_api")
BUS = ROOT / "assets" / "examples" / "bus.jpg"
MODELS = {
    "softmax": BUNDLED_DCNV3,
    "sigmoid": FORKS / "dcnv2" / "extra_dcnv2_v8_best.pt",
    "free": FORKS / "extra_v11_dcnv4" / "extra_v11_dcnv4_best.pt",
}
POSITIONS = 50  # pointer positions per layer (the acceptance)
SURFACE = '[data-deformlens="sampling-hover"]'


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry

    models = tmp_path_factory.mktemp("models")
    for path in MODELS.values():
        shutil.copy(path, models / path.name)
    context = AppContext.create(ModelRegistry(models_dir=models, model=models / BUNDLED_DCNV3.name))
    with served_app(context) as url:
        with offline_page(url, height=1200) as page:
            yield context, url, page


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[1], verbose=False)


def _wait_ready(page, layer: str) -> None:
    page.wait_for_function(
        "layer => document.querySelector('#sampling-hover [data-ready]')?.dataset.ready === layer",
        arg=layer,
        timeout=180_000,  # a layer change re-renders the whole view: slow on 2 busy cores
    )


def _drawn_rect(page) -> dict:
    """The picture's drawn area in page px (object-fit: contain inside the <img> box)."""
    page.locator("#overlay img").scroll_into_view_if_needed()  # choosing in a list may have scrolled it away
    return page.wait_for_function(  # once the picture has loaded (it may be a new one, still loading)
        """() => {
        const img = document.querySelector('#overlay img');
        if (!img || !img.complete || !img.naturalWidth) return null;
        const box = img.getBoundingClientRect();
        const f = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
        const w = img.naturalWidth * f, h = img.naturalHeight * f;
        return {x: box.left + (box.width - w) / 2, y: box.top + (box.height - h) / 2, width: w, height: h};
    }"""
    ).json_value()


def _hover(page, rect, rng) -> dict:
    """Move to a random point of the picture and read what the hover drew there. Chromium handles
    a pointer move at its next frame, after the move is acknowledged: wait for the surface to say
    a new position (every position is new: they are random)."""
    said = f"document.querySelector('{SURFACE}')?.dataset.xy"
    before = page.evaluate(f"() => {said}")
    page.mouse.move(
        rect["x"] + rng.uniform(0.01, 0.99) * rect["width"], rect["y"] + rng.uniform(0.01, 0.99) * rect["height"]
    )
    page.wait_for_function(f"before => {{ const xy = {said}; return xy && xy !== before; }}", arg=before)
    surface = page.locator(SURFACE)
    return {
        "layer": surface.get_attribute("data-layer"),
        "xy": json.loads(surface.get_attribute("data-xy")),
        "cell": json.loads(surface.get_attribute("data-cell") or "null"),
        "points": json.loads(surface.get_attribute("data-points")),
    }


def _layers(context, model: str) -> list[tuple[str, str]]:
    """(name, label in the layer list) of each deformable layer of ``model`` on bus.jpg."""
    from viz_app.views.render import layer_choice_label

    analysis = context.analyser.analyse(str(BUS), model)
    return [(record.name, layer_choice_label(record)) for record in analysis.probe.layers]


def _choose(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _open(page, model: str) -> None:
    """bus.jpg in the Image tab with ``model`` chosen (each test works alone or after another)."""
    if page.locator("#overlay img").count() == 0:
        page.set_input_files("#image-in input[type=file]", str(BUS))
        page.wait_for_selector("#overlay img")
    if page.locator("#model input").input_value() != model:
        _choose(page, "#model", model)


def _check_layer(page, client, model: str, layer: str, rng) -> int:
    """50 moves over ``layer``: no request meanwhile; each move's points equal /sampling's.
    Returns how many of the drawn points were negative (hollow)."""
    from gradio_client import handle_file

    rect = _drawn_rect(page)
    requests = []

    def log(request):
        requests.append(request)

    page.on("request", log)  # Playwright's request log: every request the page makes while moving
    hovers = [_hover(page, rect, rng) for _ in range(POSITIONS)]
    page.remove_listener("request", log)
    assert requests == [], [r.url for r in requests]
    assert len({tuple(h["xy"]) for h in hovers}) == POSITIONS  # every move was drawn (none skipped)
    negative = 0
    for hover in hovers:
        assert hover["layer"] == layer
        x, y = hover["xy"]
        _, payload = client.predict(handle_file(str(BUS)), model, layer, x, y, 0, api_name="/sampling")
        assert hover["cell"] == payload["cell"], (hover["xy"], hover["cell"], payload["cell"])
        expected = {(p["group"], p["k"]): p for p in payload["points"]}
        drawn = {(p["group"], p["k"]): p for p in hover["points"]}
        assert drawn.keys() == expected.keys()
        for point, want in expected.items():
            got = drawn[point]
            assert abs(got["x"] - want["x"]) <= 0.01 and abs(got["y"] - want["y"]) <= 0.01, (point, got, want)
            assert abs(got["weight"] - want["weight"]) <= 1e-3, (point, got, want)
        negative += sum(p["weight"] < 0 for p in hover["points"])
    return negative


@pytest.mark.parametrize("kind", list(MODELS))
def test_hover_draws_the_points_of_sampling_without_requests(app, client, kind):
    context, _, page = app
    model = MODELS[kind].name
    _open(page, model)
    layers = _layers(context, model)
    rng = random.Random(kind)
    negative = 0
    page.wait_for_function("() => document.querySelector('#sampling-hover [data-ready]')?.dataset.ready")
    shown = page.evaluate("() => document.querySelector('#sampling-hover [data-ready]').dataset.ready")
    for layer, label in layers:
        if layer != shown:  # the run opens on its default layer; the others are chosen in the list
            _choose(page, "#layer", label)
            shown = layer
        _wait_ready(page, layer)
        negative += _check_layer(page, client, model, layer, rng)
    if kind == "free":
        assert negative > 0, "the DCNv4 fixture has negative weights: some hovered points must be hollow"


def test_hover_follows_groups_shown_and_leaves_the_picture(app):
    """Groups shown applies at once (the browser reads the checkboxes; it waits for no answer);
    a position off the picture hides the surface, which otherwise lies exactly over the drawn
    picture; the page is saved for the docs while the hover shows a cell."""
    _, _, page = app
    _open(page, BUNDLED_DCNV3.name)
    page.wait_for_function("() => document.querySelector('#sampling-hover [data-ready]')?.dataset.ready")
    layer = page.evaluate("() => document.querySelector('#sampling-hover [data-ready]').dataset.ready")
    _wait_ready(page, layer)
    rect = _drawn_rect(page)
    rng = random.Random(1)
    everything = _hover(page, rect, rng)
    groups = {p["group"] for p in everything["points"]}
    assert len(groups) > 1
    page.locator("#groups input[type=checkbox]").first.uncheck()  # hide group 0: read from the checkboxes
    rect = _drawn_rect(page)  # the checkbox may have scrolled the picture away: back into view
    _hover(page, rect, random.Random(7))  # elsewhere first: a move to where the pointer is fires nothing
    again = _hover(page, rect, random.Random(1))  # the same position as before
    assert {p["group"] for p in again["points"]} == groups - {0}
    page.locator("#groups input[type=checkbox]").first.check()
    rect = _drawn_rect(page)
    shown = f"document.querySelector('{SURFACE}').style.display"
    page.mouse.move(rect["x"] + rect["width"] + 40, rect["y"] + 10)  # off the picture: hidden
    page.wait_for_function(f"() => {shown} === 'none'")
    page.mouse.move(rect["x"] + rect["width"] * 0.45, rect["y"] + rect["height"] * 0.55)
    page.wait_for_function(f"() => {shown} === 'block'")
    # The surface lies exactly over the drawn picture, so its marks sit where the served overlay puts them.
    placed = page.locator(SURFACE).bounding_box()
    for side in ("x", "y", "width", "height"):
        assert placed[side] == pytest.approx(rect[side], abs=1.0), (placed, rect)
    readme_screenshot(page, "hover", full_page=False)
