"""The workbench in image mode in a real browser: Playwright driving Debian's chromium.

Starts `streamlit run app.py` on an image classifier (the default vision model when it is
built, else a tiny random ViT saved as a folder) with MNIST as data, opens the Attention page
and saves screenshots under test-artifacts/browser/ (gitignored):

  v01_model_and_data       Model & data: the image datasets and example digits
  v02_attention_heads      Attention: every head of layer 0 as patch heatmaps over a validation digit
  v03_rollout_overlay      Attention, Rollout tab: the attention rollout overlaid on the digit
  v04_heads .. v09_sweep   every other page, drawn for the image model

Skips with a reason when chromium or playwright is missing, or when the library cannot load
an image classifier yet.
"""

import os
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ui.browser import chromium_path, free_port, launch, start_server, stop_server, wait_healthy, wait_idle  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "browser"
STEP_MS = 240_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def image_source(tmp_path_factory):
    """The default vision model if it is built, else a tiny ViT folder (the library must load it itself:
    the server is another process)."""
    from test_app_vision import _default_vision_built, _library_loads_images, _save_tiny_vit
    if _default_vision_built():
        return "default-vision"
    folder = _save_tiny_vit(tmp_path_factory.mktemp("browser-vit") / "vit")
    if not _library_loads_images(folder):
        pytest.skip("axlab.core.loading cannot load image classifiers yet")
    return folder


@pytest.fixture(scope="module")
def server(image_source):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (bash scripts/setup.sh --test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (see requirements.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_server(port, env={"HF_HUB_OFFLINE": "1", "AXLAB_DATA": os.environ["AXLAB_DATA"]},
                        log_path=ARTIFACTS / "server_vision.log")
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def main(page):
    return page.locator('[data-testid="stMain"]')


def go(page, nav: str, title: str, ready: str) -> None:
    """Click a page in the sidebar's page list; wait for its title, a text on it, and the end of its run."""
    page.locator('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]').filter(has_text=nav).first.click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=60_000)
    main(page).get_by_text(ready).first.wait_for(timeout=STEP_MS)
    wait_idle(page, STEP_MS)


def shot(page, name: str) -> Path:
    page.wait_for_timeout(600)           # let plotly draw
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0, page.locator(
        '[data-testid="stAlertContentError"]').first.inner_text()


def open_home(page, server: str, ws: str, source: str) -> None:
    """The home page in workspace ``ws`` with ``source`` as the model and MNIST as the data, after its first run."""
    page.goto(f"{server}/?ws={ws}&model={quote(source, safe='')}&data=mnist")
    page.get_by_role("heading", name="axlab workbench", level=1).wait_for(timeout=STEP_MS)
    wait_idle(page, STEP_MS)


def test_attention_rollout_over_an_image_in_chromium(server, image_source):
    from playwright.sync_api import sync_playwright

    ws = "browser-vision-" + secrets.token_hex(3)
    shots = []
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            open_home(page, server, ws, image_source)

            go(page, "Model & data", "Model & data", "Measure the base model")
            no_exception(page)
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
            assert "reads images" in sidebar, sidebar
            assert "mnist" in main(page).inner_text()
            shots.append(shot(page, "v01_model_and_data"))

            go(page, "Attention", "Attention", "The model predicts")
            page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=STEP_MS)
            no_exception(page)
            assert page.get_by_role("textbox", name="Sentence").count() == 0
            assert page.locator('[data-testid="stImage"] img').count() >= 1          # the thumbnail
            shots.append(shot(page, "v02_attention_heads"))

            page.get_by_role("tab", name="Rollout").click()
            roll = main(page).locator('[data-testid="stPlotlyChart"]').filter(has_text="Attention rollout into")
            roll.first.locator(".main-svg").first.wait_for(timeout=STEP_MS)
            roll.first.scroll_into_view_if_needed()
            wait_idle(page)
            no_exception(page)
            assert roll.first.locator("image").count() >= 1 or roll.first.locator("img").count() >= 1 \
                or roll.first.locator(".layer-below image, .imagelayer image").count() >= 1
            shots.append(shot(page, "v03_rollout_overlay"))
        finally:
            browser.close()
    for s in shots:
        assert s.exists() and s.stat().st_size > 10_000, s


def test_every_page_renders_for_the_image_model_in_chromium(server, image_source):
    """Heads, Prune, Quantize, Compare, Export and Sweep draw for the image model without an exception or
    an error box (screenshots v04..v09)."""
    from playwright.sync_api import sync_playwright

    ws = "browser-vision-pages-" + secrets.token_hex(3)
    pages = [("Heads", "Head importance"), ("Prune", "Prune"), ("Quantize", "Quantize"), ("Compare", "Compare"),
             ("Export", "Export"), ("Sweep", "Sweep")]
    shots = []
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            open_home(page, server, ws, image_source)
            for i, (nav, title) in enumerate(pages, start=4):
                go(page, nav, title, title)
                no_exception(page)
                text = main(page).inner_text()
                assert "Sentence" not in text and "Traceback" not in text, text[:500]
                shots.append(shot(page, f"v{i:02d}_{nav.lower()}"))
        finally:
            browser.close()
    for s in shots:
        assert s.exists() and s.stat().st_size > 10_000, s
