"""The Streamlit workbench, driven by streamlit.testing.v1.AppTest (no browser).

Pages render on the default model; bad inputs show st.error with a fix (never an
exception); the main path load -> importance -> prune by budget -> int8 -> compare ->
export works; two sessions are isolated by workspace; the cached base model is never
mutated. Tests use the scratch variant store from conftest (AXLAB_DATA).
"""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `import ui` inside the pages (the server adds the app folder itself)
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = ["1_Model_and_data", "2_Attention", "3_Heads", "4_Prune", "5_Quantize", "6_Compare", "7_Export"]
TIMEOUT = 300


def new_app(source: str | None = None, workspace: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if source is not None:
        at.session_state["source"] = source
    if workspace is not None:
        at.query_params["ws"] = workspace
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def page(at: AppTest, name: str) -> AppTest:
    return at.switch_page(f"pages/{name}.py").run()


def assert_clean(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.message for e in at.exception]}"
    assert not at.error, f"{where}: {[e.value for e in at.error]}"


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from axlab.core.testing import save_tiny
    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "bert", "bert"))


# ----------------------------------------------------------------------------- every page

@pytest.mark.slow
def test_every_page_renders_on_the_default_model(default_bundle):
    at = new_app()
    assert_clean(at, "home")
    assert at.title[0].value == "axlab workbench"
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "`default`" in sidebar and "6 layers x 12 heads" in sidebar
    for name in PAGES:
        page(at, name)
        assert_clean(at, name)
        assert at.title, f"{name} has no title"
        assert at.expander and at.expander[0].label == "Learn more", f"{name} has no 'learn more'"
        assert "axlab workbench" in at.sidebar.markdown[0].value, f"{name} lacks the shared sidebar"
    page(at, "2_Attention")
    assert len(at.get("plotly_chart")) >= 3          # model view, one head, rollout


def test_a_page_opened_directly_sets_up_its_own_state(tiny_folder):
    # a page run alone (direct URL visit) does not run app.py: it must initialise what it reads
    at = AppTest.from_file(str(ROOT / "pages" / "3_Heads.py"), default_timeout=TIMEOUT)
    at.session_state["source"] = tiny_folder
    at.run()
    assert_clean(at, "Heads alone")
    assert at.session_state["workspace"]
    assert at.query_params.get("ws") == at.session_state["workspace"]


# ----------------------------------------------------------------------------- bad input

def test_wrong_hub_id_offline_shows_error_and_app_keeps_working(tiny_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.radio(key="model_kind").set_value("Hub id").run()
    at.text_input(key="hub_id").input("no-such-org/no-such-model").run()
    at.button(key="load_model").click().run()
    assert not at.exception
    assert "hub" in errors(at) and "How to fix" in errors(at)
    assert at.session_state["source"] == tiny_folder          # the previous model stays
    page(at, "2_Attention")
    assert_clean(at, "attention after a failed load")


def test_home_says_how_to_build_a_missing_default_model(tmp_path, monkeypatch):
    from ui.state import load_base
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))          # an empty cache: no default model there
    load_base.clear()                                         # forget a default model loaded by another test
    at = new_app()
    assert not at.exception
    assert "not been built" in errors(at) and "axlab prepare" in errors(at)
    assert at.title[0].value == "axlab workbench"             # the page itself still renders
    load_base.clear()


def test_folder_without_weights_shows_error(tmp_path, tiny_folder):
    from axlab.core.testing import tiny_model
    tiny_model("bert").config.save_pretrained(tmp_path)       # config.json only
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.radio(key="model_kind").set_value("Local folder").run()
    at.text_input(key="model_folder").input(str(tmp_path)).run()
    at.button(key="load_model").click().run()
    assert not at.exception
    assert "no weights" in errors(at) and "How to fix" in errors(at)


def test_unsupported_model_shows_error(tmp_path, tiny_folder):
    from transformers import GPT2Config
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8)
    cfg.architectures = ["GPT2ForSequenceClassification"]
    cfg.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.radio(key="model_kind").set_value("Local folder").run()
    at.text_input(key="model_folder").input(str(tmp_path)).run()
    at.button(key="load_model").click().run()
    assert not at.exception
    assert "gpt2" in errors(at).lower() and "How to fix" in errors(at)


def test_csv_without_label_column_shows_error(tiny_folder):
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    csv = "text,stars\n" + "\n".join(f"review number {i},{i % 5}" for i in range(40))
    at.file_uploader(key="upload").set_value(("reviews.csv", csv.encode(), "text/csv")).run()
    at.button(key="load_data").click().run()
    assert not at.exception
    assert "no label column" in errors(at) and "How to fix" in errors(at)
    assert at.session_state["dataset"] == "rotten_tomatoes"  # the previous data stays


def test_csv_upload_with_label_column_becomes_the_dataset(tiny_folder):
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    csv = "text,label\n" + "\n".join(f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(60))
    at.file_uploader(key="upload").set_value(("mine.csv", csv.encode(), "text/csv")).run()
    at.button(key="load_data").click().run()
    assert_clean(at, "upload")
    assert Path(at.session_state["dataset"]).name.startswith("mine-")
    assert any("`mine-" in m.value for m in at.sidebar.markdown)


# ----------------------------------------------------------------------------- sessions

def test_two_sessions_are_isolated_and_the_base_is_not_mutated(tiny_folder):
    a = new_app(tiny_folder, measure_n=60, latency_runs=5)
    b = new_app(tiny_folder, measure_n=60, latency_runs=5)
    assert a.session_state["workspace"] != b.session_state["workspace"]
    from ui.state import load_base
    base = load_base(tiny_folder, False).model
    before = {k: v.clone() for k, v in base.state_dict().items()}

    page(a, "4_Prune")
    a.multiselect(key="hand_heads").set_value(["L0.H1", "L1.H2"]).run()
    a.button(key="hand_go").click().run()
    assert_clean(a, "prune by hand")
    names_a = [v.name for v in _variants(a)]
    assert "hand-2-heads" in names_a and "base" in names_a

    page(b, "6_Compare")
    assert _variants(b) == []                                 # b does not see a's variants
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)   # the shared base is untouched

    # sharing on purpose: b switches to a's workspace name
    b.text_input(key="ws_input").input(a.session_state["workspace"]).run()
    b.button(key="ws_switch").click().run()
    assert sorted(v.name for v in _variants(b)) == sorted(names_a)


def test_a_refresh_keeps_the_workspace_and_its_variants(tiny_folder):
    a = new_app(tiny_folder, measure_n=60, latency_runs=5)
    page(a, "5_Quantize")
    a.button(key="quant_go").click().run()
    assert_clean(a, "int8")
    ws = a.session_state["workspace"]
    assert a.query_params.get("ws") == ws
    # a refresh is a new session with the same URL
    again = new_app(tiny_folder, workspace=ws)
    assert again.session_state["workspace"] == ws
    assert "int8" in [v.name for v in _variants(again)]


def _variants(at):
    from ui.state import variant_store
    return variant_store().list(workspace=at.session_state["workspace"])


# ----------------------------------------------------------------------------- main path

@pytest.mark.slow
def test_main_path_on_the_default_model(default_bundle, tmp_path):
    at = new_app(measure_n=300, latency_runs=5)
    page(at, "3_Heads")
    at.slider(key="imp_n").set_value(100).run()
    at.button(key="imp_go").click().run()
    assert_clean(at, "importance")
    assert at.get("plotly_chart") and at.dataframe              # figure + ranking

    page(at, "4_Prune")
    at.slider(key="budget_frac").set_value(0.25).run()
    at.button(key="budget_go").click().run()
    assert_clean(at, "prune by budget")
    assert "heads-25%" in at.success[0].value

    page(at, "5_Quantize")
    at.selectbox(key="quant_start").set_value("heads-25% (1 steps)").run()
    at.button(key="quant_go").click().run()
    assert_clean(at, "int8")

    variants = {v.name: v for v in _variants(at)}
    assert set(variants) == {"base", "heads-25%", "heads-25%+int8"}
    assert variants["heads-25%+int8"].recipe[0]["op"] == "prune_heads"
    assert variants["heads-25%+int8"].recipe[-1]["op"] == "quantize_int8"
    base_acc = variants["base"].measurements["accuracy"]
    assert base_acc > 0.7                                        # the real model, on real reviews
    for v in variants.values():
        assert v.measurements["n"] == 300
    pruned = variants["heads-25%"].measurements
    assert pruned["params"] < variants["base"].measurements["params"]
    assert variants["heads-25%+int8"].measurements["size_bytes"] < pruned["size_bytes"]

    page(at, "6_Compare")
    assert_clean(at, "compare")
    assert len(at.dataframe[0].value) == 3
    assert len(at.get("plotly_chart")) >= 2

    page(at, "7_Export")
    folder = tmp_path / "exported"
    at.selectbox(key="exp_variant").set_value("heads-25%").run()
    at.text_input(key="exp_folder_heads-25%").input(str(folder)).run()
    at.checkbox(key="exp_onnx").uncheck().run()
    at.checkbox(key="exp_report").uncheck().run()
    at.button(key="exp_go").click().run()
    assert_clean(at, "export")
    from axlab.core.loading import load_variant
    from axlab.core.measure import predict_logits
    reloaded = load_variant(folder)
    from ui.state import load_base, load_splits, variant_model
    model = variant_model(load_base("default"), load_splits("rotten_tomatoes"), variants["heads-25%"].recipe)
    texts = default_bundle_texts = ["a gorgeous, witty, seductive movie.", "dull and far too long."]
    assert torch.allclose(predict_logits(reloaded.model, reloaded.tokenizer, default_bundle_texts),
                          predict_logits(model, default_bundle.tokenizer, texts), atol=1e-4)


# ----------------------------------------------------------------------------- background jobs

def test_a_job_keeps_running_without_its_page_and_can_be_stopped():
    import threading

    from axlab.core.progress import Stopped

    from ui import jobs

    release = threading.Event()

    def slow(progress):
        for i in range(1000):
            progress(i, 1000, "working")
            if release.wait(0.01):
                return "result"
        return "timeout"

    job = jobs.start("ws-jobs", "slot", "test job", slow)
    assert jobs.start("ws-jobs", "slot", "again", slow) is job      # joining, not starting a second one
    assert not job.finished                                           # nobody waits: it runs on its own
    release.set()
    assert jobs.collect("ws-jobs", "slot") == "result"              # a later page run picks the result up
    assert jobs.get("ws-jobs", "slot") is None

    release.clear()
    job = jobs.start("ws-jobs", "slot", "stopped job", slow)
    job.stop_requested = True                                         # what the Stop button does
    with pytest.raises(Stopped):
        jobs.collect("ws-jobs", "slot")


def test_axformer_search_shows_its_log_and_saves_the_variant(tiny_folder):
    at = page(new_app(tiny_folder, measure_n=60, latency_runs=5), "4_Prune")
    at.slider(key="ax_nval").set_value(100).run()
    at.button(key="ax_go").click().run()
    assert_clean(at, "search")
    assert any(h.value == "Decision log" for h in at.subheader)
    kept = next(m for m in at.metric if m.label == "Changes kept").value
    at.button(key="search_go").click().run()
    assert_clean(at, "save search")
    found = at.session_state["search_result"]["recipe"]
    saved = {v.name: v for v in _variants(at)}["axformer"]
    assert saved.recipe == found and kept.endswith(f"of {len(at.session_state['search_result']['log'])}")
