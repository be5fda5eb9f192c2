"""The Sweep page (AppTest, no browser): a sweep on a local Ray (2 workers) on a tiny model shows
the live Pareto front and every trial's recipe in words; the trials land in the workspace's
variants; no Ray process is left afterwards."""

import re
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `import ui` inside the pages (the server adds the app folder itself)
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

pytest.importorskip("ray", reason="ray is not installed (see requirements.txt)")
TIMEOUT = 300


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from axlab.core.testing import save_tiny
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "electra", "electra"))


def sweep_page(source: str, ws: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["source"] = source
    at.query_params["ws"] = ws
    at.run()
    return at.switch_page("pages/8_Sweep.py").run()


def text_of(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_sweep_page_runs_a_sweep_and_shows_the_front_and_every_recipe(tiny_folder):
    at = sweep_page(tiny_folder, "sweep-app")
    assert_clean(at)
    assert at.title[0].value == "Sweep" and at.expander[0].label == "Learn more"
    at.multiselect(key="sw_heads").set_value([0.25, 0.5])
    at.multiselect(key="sw_quant").set_value(["none", "int8"])
    at.number_input(key="sw_budget").set_value(3)
    at.number_input(key="sw_nval").set_value(24)
    at.number_input(key="sw_ntest").set_value(24)
    at.number_input(key="sw_lat").set_value(2)
    at.number_input(key="sw_workers").set_value(2)
    at.run()
    assert_clean(at)
    assert any("4 trials" in c.value for c in at.caption)
    assert "No trial of this spec is measured yet" in " ".join(i.value for i in at.info)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    at.button(key="sw_start").click().run()
    assert_clean(at)
    seen_ray, seen_progress, partial_front = set(), False, False
    deadline = time.time() + 240
    while time.time() < deadline:
        seen_ray |= {p.pid for p in psutil.Process().children(recursive=True)} - before
        seen_progress |= bool(at.get("progress"))
        if "4** of 4 trials measured" in text_of(at) and not at.get("progress"):
            break
        if at.get("plotly_chart") and "of 4 trials measured" in text_of(at):
            partial_front = True              # the front is drawn while the sweep is still running
        time.sleep(1.0)
        at.run()
    assert_clean(at)
    assert "**4** of 4 trials measured, **0** failed" in text_of(at), text_of(at)
    assert seen_progress and seen_ray, "the sweep did not run on Ray workers"
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table.status) == {"ok"}
    assert table.recipe.str.contains("remove 2 heads in").sum() == 2       # 25% of 2 layers x 4 heads
    assert table.recipe.str.contains("int8 weights").any() and (table.recipe == "the base model").any()
    assert table.pareto.any() and table.chosen.sum() == 1
    assert any("Chosen on validation" in s.value for s in at.success)
    # the trials are ordinary variants of this workspace (Compare lists them)
    from axlab.store.variants import VariantStore
    names = {v.name for v in VariantStore().list(workspace="sweep-app")}
    assert len([n for n in names if n.startswith("sweep-")]) == 4
    # Ray is shut down after the sweep: nothing it started is still running
    time.sleep(1.0)
    alive = [pid for pid in seen_ray if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"Ray processes left: {alive}"
    # the same spec again: everything is already measured
    at.run()
    assert "**4** of 4 trials measured" in text_of(at)


def test_the_sweep_page_opened_directly_sets_up_its_own_state(tiny_folder):
    at = AppTest.from_file(str(ROOT / "pages" / "8_Sweep.py"), default_timeout=TIMEOUT)
    at.session_state["source"] = tiny_folder
    at.run()
    assert_clean(at)
    assert at.session_state["workspace"] and at.button(key="sw_start")
    at.multiselect(key="sw_heads").set_value([])                # nothing chosen: the step is off
    at.multiselect(key="sw_quant").set_value(["rtn", "gpfq"])
    at.multiselect(key="sw_bits").set_value([3, 4])
    at.run()
    assert_clean(at)
    assert any("5 trials (4 distinct recipes" in c.value for c in at.caption)


def test_stop_keeps_the_finished_trials_and_start_resumes(tiny_folder):
    at = sweep_page(tiny_folder, "sweep-stop")
    at.multiselect(key="sw_heads").set_value([0.0, 0.25, 0.5])
    at.multiselect(key="sw_quant").set_value(["none", "int8", "rtn"])
    at.multiselect(key="sw_bits").set_value([4, 8])
    at.number_input(key="sw_budget").set_value(10)
    at.number_input(key="sw_nval").set_value(24)
    at.number_input(key="sw_ntest").set_value(24)
    at.number_input(key="sw_lat").set_value(300)                 # slow trials, so Stop lands mid-sweep
    at.radio(key="sw_backend").set_value("this process (no Ray)")
    at.run()
    at.button(key="sw_start").click().run()
    stop = [b for b in at.button if b.key and b.key.startswith("sw_stop_")]
    assert stop, "no Stop button while the sweep runs"
    stop[0].click().run()
    deadline = time.time() + 120
    while at.get("progress") and time.time() < deadline:
        time.sleep(0.5)
        at.run()
    assert_clean(at)
    assert any("was stopped" in i.value for i in at.info)
    done = int(re.search(r"\*\*(\d+)\*\* of 11 trials measured", text_of(at)).group(1))
    assert done < 11
    at.button(key="sw_start").click().run()                      # the same spec again: resumes
    deadline = time.time() + 240
    while "**11** of 11 trials measured" not in text_of(at) and time.time() < deadline:
        time.sleep(1.0)
        at.run()
    assert "**11** of 11 trials measured" in text_of(at)
