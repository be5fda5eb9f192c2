"""One real-browser walk through the workbench: Playwright driving Debian's chromium.

Starts `streamlit run app.py`, clicks load -> attention -> importance -> prune by budget ->
int8 -> compare -> export, and saves a screenshot of every page under
test-artifacts/browser/ (gitignored). Skips with a reason when chromium is missing.

The first-hour screenshots (issue 19):
  03b_long_text_notice     the Attention page with a 5,000-word text: how many tokens were kept
  04a_estimate_long_job    ablation importance: the estimate up front, then the running job's
                           elapsed / time left and its Stop button (stopped after the shot)
  05a_confirm_all_heads    Prune by budget at 100%: the warning and the confirmation box
  09_report_recipes        the exported report (report.html) with its recipes
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
def server(default_bundle, tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (bash scripts/setup.sh --test installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (see requirements.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # a scratch cache that shares only the built models: analysis results from an earlier run
    # would come back at once, and the page would never show a long job's estimate
    from axlab.core.paths import cache_dir
    home = tmp_path_factory.mktemp("axlab-home")
    (home / "cache").mkdir()
    (home / "cache" / "models").symlink_to(cache_dir("models"), target_is_directory=True)
    proc = start_server(port, env={"HF_HUB_OFFLINE": "1", "AXLAB_DATA": os.environ["AXLAB_DATA"],
                                   "AXLAB_HOME": str(home)},
                        log_path=ARTIFACTS / "server.log")
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def go(page, nav: str, title: str, ready: str) -> None:
    """Click a page in the sidebar's page list; wait for its title, a text near its end, and the end of its run."""
    page.locator('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]').filter(has_text=nav).first.click()
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

            nav_text = page.locator('[data-testid="stSidebar"]').inner_text()
            assert "Home" in nav_text and "\napp\n" not in f"\n{nav_text}\n"      # the home page is named

            go(page, "Model & data", "Model & data", "Measure the base model")
            no_exception(page)
            shots.append(shot(page, 2, "model_and_data"))

            go(page, "Attention", "Attention", "Sentence")
            page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=STEP_MS)
            no_exception(page)
            shots.append(shot(page, 3, "attention"))
            box = page.get_by_role("textbox", name="Sentence")
            box.fill(" ".join(["A remarkably long and winding review of a film that never ends."] * 450))
            box.press("Enter")
            main(page).get_by_text("tokens were kept").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 3, "b_long_text_notice"))

            go(page, "Heads", "Head importance", "Compute importance")
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Method").click()
            page.get_by_role("option", name="ablation").click()
            wait_idle(page)
            main(page).get_by_text("Estimated time for ablation importance").wait_for(timeout=STEP_MS)
            click_button(page, "Compute importance")
            main(page).get_by_text(re.compile(r"elapsed, about .* left")).first.wait_for(timeout=STEP_MS)
            shots.append(shot(page, 4, "a_estimate_long_job"))
            main(page).get_by_role("button", name="Stop", exact=True).click()    # the job's own Stop (not the header's)
            main(page).get_by_text("Stopped.").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Method").click()
            page.get_by_role("option", name="gradient").click()
            wait_idle(page)
            click_button(page, "Compute importance")
            page.get_by_role("heading", name="Ranking").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 4, "heads"))

            go(page, "Prune", "Prune", "Create variant")
            set_measurement(page, 300, 5)
            slider = main(page).get_by_role("slider").first            # fraction of heads to remove
            slider.focus()
            slider.press("End")                                         # 100%: every head
            main(page).get_by_text("I understand: create this variant anyway").wait_for(timeout=STEP_MS)
            wait_idle(page)
            no_exception(page)
            shots.append(shot(page, 5, "a_confirm_all_heads"))
            slider.press("Home")
            for _ in range(5):                                          # 0% -> 25%
                slider.press("ArrowRight")
            main(page).get_by_text("Removes 18 of 72 heads").wait_for(timeout=STEP_MS)
            wait_idle(page)
            click_button(page, "Create variant")
            main(page).get_by_text("Saved variant").wait_for(timeout=STEP_MS)
            wait_idle(page, STEP_MS)
            no_exception(page)
            shots.append(shot(page, 5, "prune"))

            go(page, "Quantize", "Quantize", "Create variant")
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Start from").click()   # open it
            page.get_by_role("option", name="heads-25% (18 of 72) (1 steps)").click()
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

            reports = sorted(Path(os.environ["AXLAB_DATA"]).glob(f"exports/{ws}/*/report/report.html"))
            assert reports, "the export wrote no report.html"
            page.goto(reports[-1].as_uri())
            page.wait_for_load_state("load")
            shots.append(shot(page, 9, "report_recipes"))
        finally:
            page.screenshot(path=str(ARTIFACTS / "last.png"))
            browser.close()
    assert all(s.stat().st_size > 10_000 for s in shots)
