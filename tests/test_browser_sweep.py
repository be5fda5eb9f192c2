"""The Sweep page in a real browser (Playwright + Debian's chromium): start a small sweep on a
local Ray, watch the live Pareto front appear, and save a screenshot under
test-artifacts/browser/ (gitignored). Skips with a reason when chromium is missing."""

import os
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

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from axlab.core.testing import save_tiny
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "bert", "bert"))


@pytest.fixture(scope="module")
def server():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (bash scripts/setup.sh --test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (see requirements.txt)")
    pytest.importorskip("ray", reason="ray is not installed (see requirements.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_server(port, env={"HF_HUB_OFFLINE": "1", "AXLAB_DATA": os.environ["AXLAB_DATA"]},
                        log_path=ARTIFACTS / "server_sweep.log")
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def set_number(page, label: str, value) -> None:
    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)
    wait_idle(page)


def test_sweep_page_in_a_browser_shows_the_live_front(server, tiny_folder):
    from playwright.sync_api import sync_playwright
    ws = "br-sweep-" + secrets.token_hex(3)
    with sync_playwright() as p:
        browser, page = launch(p, height=2600)
        try:
            page.goto(f"{server}/Sweep?ws={ws}&model={tiny_folder}")
            page.get_by_role("heading", name="Sweep", level=1).wait_for(timeout=120_000)
            wait_idle(page, STEP_MS)
            set_number(page, "Trials (budget)", 3)
            page.get_by_text("Measurement and workers").first.click()
            for label, value in (("Validation examples", 40), ("Test examples", 40), ("Batch-1 latency runs", 3),
                                 ("Local Ray workers", 2)):
                set_number(page, label, value)
            page.get_by_role("button", name="Start sweep").click()
            main = page.locator('[data-testid="stMain"]')
            main.get_by_text("4 of 4 trials measured", exact=False).first.wait_for(timeout=STEP_MS)
            page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
            main.get_by_text("Chosen on validation", exact=False).first.wait_for(timeout=60_000)
            wait_idle(page, STEP_MS)
            page.wait_for_timeout(800)                         # let plotly draw
            shot = ARTIFACTS / "08_sweep.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator(".js-plotly-plot").count() == 2
            assert main.get_by_text("Every trial").count() >= 1
        finally:
            browser.close()
