"""One real-browser walk through the workbench: Playwright driving Debian's chromium.

Starts `streamlit run app.py`, clicks load -> attention -> importance -> prune by budget ->
int8 -> compare -> export, and saves a screenshot of every page under
test-artifacts/browser/ (gitignored). Skips with a reason when chromium is missing.
"""

import os
import re
import secrets
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ui.browser import chromium_path, free_port, launch, start_server, stop_server, wait_healthy, wait_idle  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts" / "browser"
STEP_MS = 240_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(default_bundle):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (bash scripts/setup.sh --test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (see requirements.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_server(port, env={"HF_HUB_OFFLINE": "1", "AXLAB_DATA": os.environ["AXLAB_DATA"]},
                        log_path=ARTIFACTS / "server.log")
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def go(page, nav: str, title: str, ready: str) -> None:
    """Click a page in the sidebar navigation; wait for its title, a text near its end, and the end of its run."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text(nav, exact=True).click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=60_000)
    main(page).get_by_text(ready, exact=True).first.wait_for(timeout=STEP_MS)
    wait_idle(page, STEP_MS)


def main(page):
    """The main area (not the sidebar, whose 'Saved variants' would match 'Saved variant')."""
    return page.locator('[data-testid="stMain"]')


def shot(page, n: int, name: str) -> Path:
    page.wait_for_timeout(400)           # let plotly draw
    path = ARTIFACTS / f"{n:02d}_{name}.png"
    page.screenshot(path=str(path))
    return path


def click_button(page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).first.click()


def set_measurement(page, examples: int, latency_runs: int) -> None:
    """Fewer test examples and latency runs than a user's default, to keep the test short."""
    page.get_by_text("Measurement settings").first.click()
    for label, value in (("Test examples for accuracy", examples), ("Batch-1 latency runs", latency_runs)):
        box = page.get_by_role("spinbutton", name=label)
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(500)
        wait_idle(page)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def test_walk_the_main_path_in_chromium(server):
    from playwright.sync_api import sync_playwright

    ws = "browser-" + secrets.token_hex(3)
    shots = []
    with sync_playwright() as p:
        browser, page = launch(p)
        try:
            page.goto(f"{server}/?ws={ws}")
            page.get_by_role("heading", name="axlab workbench", level=1).wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            assert "6 layers x 12 heads" in page.locator('[data-testid="stSidebar"]').inner_text()
            shots.append(shot(page, 1, "home"))

            go(page, "Model and data", "Model & data", "Measure the base model")
            no_exception(page)
            shots.append(shot(page, 2, "model_and_data"))

            go(page, "Attention", "Attention", "Sentence")
            page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=STEP_MS)
            no_exception(page)
            shots.append(shot(page, 3, "attention"))

            go(page, "Heads", "Head importance", "Compute importance")
            click_button(page, "Compute importance")
            page.get_by_role("heading", name="Ranking").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 4, "heads"))

            go(page, "Prune", "Prune", "Create variant")
            set_measurement(page, 300, 5)
            click_button(page, "Create variant")
            main(page).get_by_text("Saved variant").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 5, "prune"))

            go(page, "Quantize", "Quantize", "Create variant")
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Start from").click()   # open it
            page.get_by_role("option", name="heads-25% (1 steps)").click()
            wait_idle(page)
            click_button(page, "Create variant")
            main(page).get_by_text("Saved variant").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 6, "quantize"))

            go(page, "Compare", "Compare", "Before / after")
            page.get_by_role("heading", name="3 variants").wait_for(timeout=STEP_MS)
            no_exception(page)
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
            assert "Saved variants (3)" in sidebar
            shots.append(shot(page, 7, "compare"))

            go(page, "Export", "Export", "Comparison report")
            onnx = main(page).locator('[data-testid="stCheckbox"]').filter(has_text=re.compile(r"^ONNX$"))
            onnx.click()                                                  # folder + report only: quick
            wait_idle(page)
            click_button(page, "Export")
            main(page).get_by_text("Exported to").wait_for(timeout=STEP_MS)
            page.get_by_role("button", name="Download the report (HTML)").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 8, "export"))
        finally:
            page.screenshot(path=str(ARTIFACTS / "last.png"))
            browser.close()
    assert all(s.stat().st_size > 10_000 for s in shots)
