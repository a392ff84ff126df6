"""Shared pieces of the browser tests: the app served on a free loopback port, and a page of the
system Chromium (driven by Playwright; ``playwright install`` is never used) that may only reach
the app: every other request is aborted, so the tests also show that the UI works offline."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from app_server import served_app  # noqa: F401 - the browser tests' server

CHROMIUM = Path("/usr/bin/chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs the system Chromium at /usr/bin/chromium (apt-get install -y "
    "chromium); this project never runs `playwright install`",
)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
LOCAL = ("http://127.0.0.1", "data:", "blob:")


@contextlib.contextmanager
def offline_page(url: str, height: int = 1000, timeout_ms: int = 60_000, extra_args=(), **page_options):
    """A 1600 px wide headless Chromium page on ``url`` that can reach nothing but the app."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + list(extra_args))
        page = browser.new_page(viewport={"width": 1600, "height": height}, **page_options)
        page.set_default_timeout(timeout_ms)
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOCAL) else route.abort())
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


def readme_screenshot(page, name: str, full_page: bool = True) -> Path | None:
    """Save the page as ``$DEFORMLENS_SCREENSHOT_DIR/<name>.png`` (nothing when it is unset), as
    ``save_picture`` does."""
    import os

    folder = os.environ.get("DEFORMLENS_SCREENSHOT_DIR")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return save_picture(page, Path(folder) / f"{name}.png", full_page)


def save_picture(page, path: Path, full_page: bool = True) -> Path:
    """The page as the README shows it, at ``path``: notifications closed, 256 colours so the
    pictures stay small."""
    from PIL import Image

    for close in page.locator("[data-testid='toast-close']").all():
        close.click()
    page.wait_for_timeout(1000)
    page.screenshot(path=str(path), full_page=full_page)
    picture = Image.open(path).convert("RGB")
    picture.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(
        path, optimize=True
    )
    return path


def image_src(page, selector):
    return page.locator(f"{selector} img").first.get_attribute("src")


def wait_for_new_image(page, selector, old_src):
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel + ' img'); return i && i.src !== old; }",
        arg=[selector, old_src],
    )


def wait_text(page, selector, text):
    page.wait_for_function(
        "([sel, text]) => { const e = document.querySelector(sel); return e && e.innerText.includes(text); }",
        arg=[selector, text],
    )


def set_slider(page, elem_id, value):
    """Type a value into a slider's number box; leaving the box releases the slider."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()
