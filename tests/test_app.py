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
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))   # a valid file of the wrong model
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
    assert '"Label column" box' in errors(at)                 # the hint names the box on the page...
    assert "label_column=" not in errors(at) and "--label-column" not in errors(at)   # ...not the API or CLI
    assert at.session_state["dataset"] == "rotten_tomatoes"  # the previous data stays


def test_csv_upload_with_label_column_becomes_the_dataset(tiny_folder):
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    csv = "text,label\n" + "\n".join(f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(60))
    at.file_uploader(key="upload").set_value(("mine.csv", csv.encode(), "text/csv")).run()
    at.button(key="load_data").click().run()
    assert_clean(at, "upload")
    assert Path(at.session_state["dataset"]).name.startswith("mine-")
    assert any("`mine.csv`" in m.value for m in at.sidebar.markdown)     # the upload's own name, not the hashed copy


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
    pruned_name = "heads-25% (18 of 72)"
    assert pruned_name in at.success[0].value

    page(at, "5_Quantize")
    at.selectbox(key="quant_start").set_value(f"{pruned_name} (1 steps)").run()
    assert at.text_input(key="quant_name").value == f"{pruned_name}+int8"
    at.button(key="quant_go").click().run()
    assert_clean(at, "int8")

    variants = {v.name: v for v in _variants(at)}
    both = f"{pruned_name}+int8"
    assert set(variants) == {"base", pruned_name, both}
    variants["heads-25%"] = variants.pop(pruned_name)
    variants["heads-25%+int8"] = variants.pop(both)
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
    at.selectbox(key="exp_variant").set_value(pruned_name).run()
    at.text_input(key=f"exp_folder_{pruned_name}").input(str(folder)).run()
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


def test_export_page_writes_the_fused_graph_and_says_when_it_falls_back(tiny_folder, tmp_path):
    import onnx

    from axlab.deploy.fused_onnx import attention_node_count, op_histogram
    from axlab.store.variants import Variant
    from ui.state import variant_store
    at = new_app(tiny_folder, measure_n=24)
    ss = at.session_state
    for name, recipe in (("q4", [{"op": "quantize_rtn", "params": {"bits": 4}}]),
                         ("topk", [{"op": "hard_attention", "params": {"topk": {"0": 2}}}])):
        variant_store().add(Variant(name=name, base=ss["source"], dataset=ss["dataset"], workspace=ss["workspace"],
                                    recipe=recipe))
    page(at, "7_Export")
    for name, n_attention, kernel in (("q4", 2, "auto"), ("q4", 2, "nbits"), ("topk", 0, "auto")):
        folder = tmp_path / f"{name}-{kernel}"
        at.selectbox(key="exp_variant").set_value(name).run()
        at.text_input(key=f"exp_folder_{name}").input(str(folder)).run()
        at.checkbox(key="exp_report").uncheck().run()
        assert at.radio(key="exp_graph").value == "fused"                  # the default
        at.radio(key="exp_lowbit").set_value(kernel).run()
        at.button(key="exp_go").click().run()
        assert_clean(at, name)
        ops = op_histogram(onnx.load(str(folder / "onnx" / "model.onnx")))
        assert attention_node_count(ops) == n_attention
        fallback = [w.value for w in at.warning if "plain graph" in w.value]
        shown = " ".join(m.value for m in at.markdown)
        if n_attention and kernel == "auto":
            # 4-bit codes on the int8 kernel: q/k/v stacked in QAttention, the rest DynamicQuantizeMatMul
            assert not fallback and ops["com.microsoft:DynamicQuantizeMatMul"] == 6 and ops["com.microsoft:QAttention"] == 2
            assert "8 weight matrices on **the int8 kernel**" in shown
        elif n_attention:                                                 # the exact path, on request
            assert not fallback and ops["com.microsoft:MatMulNBits"] == 8
            assert "com.microsoft:DynamicQuantizeMatMul" not in ops and "8 weight matrices on **MatMulNBits**" in shown
        else:
            assert len(fallback) == 1 and "top-k hard attention" in fallback[0]
        table = next(d.value for d in at.dataframe if "runtime" in d.value.columns)
        assert list(table["runtime"]) == ["pytorch", "onnxruntime"]
        assert list(table["graph"]) == ["-", "fused" if n_attention else "plain"]


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
    assert at.radio(key="ax_mode").value == "Quick"                   # the fast pass is the default
    at.radio(key="ax_mode").set_value("Custom").run()
    at.slider(key="ax_nval").set_value(100).run()
    assert any("Estimated time for the search" in c.value or "searched before" in c.value for c in at.caption)
    at.button(key="ax_go").click().run()
    assert_clean(at, "search")
    assert any(h.value == "Decision log" for h in at.subheader)
    kept = next(m for m in at.metric if m.label == "Changes kept").value
    if any(c.key == "search_confirm" for c in at.checkbox):      # a random tiny model may lose every head
        assert at.button(key="search_go").disabled and at.warning
        at.checkbox(key="search_confirm").check().run()
    at.button(key="search_go").click().run()
    assert_clean(at, "save search")
    found = at.session_state["search_result"]["recipe"]
    saved = {v.name: v for v in _variants(at)}["axformer-100val"]
    assert saved.recipe == found and kept.endswith(f"of {len(at.session_state['search_result']['log'])}")


# ----------------------------------------------------------------------------- the first hour (issue 19)

@pytest.fixture(scope="module")
def folder_72(tmp_path_factory):
    """A tiny RoBERTa with the default model's grid: 6 layers x 12 heads (72 heads)."""
    from axlab.core.testing import save_tiny
    return str(save_tiny(tmp_path_factory.mktemp("tiny72") / "roberta", "roberta", layers=6, heads=12, hidden=48))


def _prune_page_with_importance(folder):
    """The Prune page with a (random) importance map already computed for this model and data."""
    from ui.state import analysis_results
    at = new_app(folder, measure_n=50, latency_runs=5)
    imp = torch.rand(6, 12, generator=torch.Generator().manual_seed(1))
    analysis_results()[("importance", folder, at.session_state["dataset"], "gradient", 200)] = imp
    return page(at, "4_Prune"), imp


def test_default_names_follow_the_settings(folder_72):
    from axlab.compress import prune
    at, imp = _prune_page_with_importance(folder_72)
    assert_clean(at, "prune")
    for fraction in (0.4, 0.25):
        at.slider(key="budget_frac").set_value(fraction).run()
        n = sum(len(h) for h in prune.heads_by_budget(imp, fraction).values())
        assert at.text_input(key="budget_name").value == f"heads-{round(fraction * 100)}% ({n} of 72)"
        assert f"Removes **{n}** of 72 heads" in " ".join(m.value for m in at.markdown)
    assert at.text_input(key="budget_name").value == "heads-25% (18 of 72)"
    # hand-picked: the name counts the heads picked
    options = [f"L{layer}.H{head}" for layer in range(6) for head in range(12)]
    for k, name in ((3, "hand-3-heads"), (12, "hand-12-heads"), (72, "hand-all-72-heads")):
        at.multiselect(key="hand_heads").set_value(options[:k]).run()
        assert at.text_input(key="hand_name").value == name, k
    # a name the user typed is kept when the settings change
    at.text_input(key="budget_name").input("my-cut").run()
    at.slider(key="budget_frac").set_value(0.5).run()
    assert at.text_input(key="budget_name").value == "my-cut"
    # saving makes the name taken: the next suggestion gets a suffix
    at.multiselect(key="hand_heads").set_value(options[:3]).run()
    at.button(key="hand_go").click().run()
    assert_clean(at, "save hand-3-heads")
    assert "hand-3-heads" in {v.name for v in _variants(at)}
    at.run()
    assert at.text_input(key="hand_name").value == "hand-3-heads-2"


def test_removing_every_head_asks_for_confirmation_and_nothing_explains_the_baseline(folder_72):
    at, _ = _prune_page_with_importance(folder_72)
    options = [f"L{layer}.H{head}" for layer in range(6) for head in range(12)]
    at.multiselect(key="hand_heads").set_value([]).run()
    assert any("0-removal baseline" in i.value for i in at.info)          # removing nothing: explained
    at.multiselect(key="hand_heads").set_value(options).run()
    warning = " ".join(w.value for w in at.warning)
    assert "all 72 attention heads" in warning and "same answer for every input" in warning
    assert at.button(key="hand_go").disabled                               # not without the confirmation
    at.slider(key="budget_frac").set_value(1.0).run()                      # the budget slider's 100% too
    assert at.checkbox(key="budget_confirm") is not None
    at.checkbox(key="hand_confirm").check().run()
    assert not at.button(key="hand_go").disabled
    at.button(key="hand_go").click().run()
    assert_clean(at, "all heads, confirmed")
    saved = {v.name: v for v in _variants(at)}
    assert "hand-all-72-heads" in saved
    assert sum(len(h) for h in saved["hand-all-72-heads"].recipe[0]["params"]["heads"].values()) == 72


def test_a_long_text_says_how_many_tokens_were_kept(tiny_folder):
    at = page(new_app(tiny_folder), "2_Attention")
    long_text = " ".join(["a remarkably long and winding review of the film"] * 500)   # ~5,000 words
    at.text_input(key="attn_text").input(long_text).run()
    assert_clean(at, "long text")
    notice = " ".join(w.value for w in at.warning)
    from axlab.core.measure import MAX_LENGTH
    assert f"first {MAX_LENGTH} tokens were kept" in notice and "tokens**" in notice
    full = int(notice.split("has **")[1].split(" tokens")[0].replace(",", ""))
    assert full > 4000                                                     # the whole text was counted
    at.slider(key="attn_first_n").set_value(20).run()
    assert_clean(at, "first 20 tokens")
    assert any("Showing tokens 1-20" in c.value for c in at.caption)
    at.text_input(key="attn_text").input("a short one.").run()
    assert not at.warning                                                  # no notice when nothing is cut


def test_a_job_stopped_from_the_header_keeps_its_visible_state(tiny_folder):
    """The header's Stop ends the page's run, not its job: the job shows in the sidebar of every page with its
    progress and a Stop button, and the next run of its page shows it and picks up its result."""
    import threading

    from ui import jobs
    from ui.state import analysis_results

    at = new_app(tiny_folder)
    ws, dataset = at.session_state["workspace"], at.session_state["dataset"]
    release = threading.Event()
    key = ("importance", tiny_folder, dataset, "gradient", 200)

    def importance(progress):                 # what the Heads page's button starts, slowed down
        for i in range(10_000):
            progress(i, 10_000, "scoring heads")
            if release.wait(0.01):
                break
        analysis_results()[key] = torch.arange(8, dtype=torch.float32).reshape(2, 4)
        return "done"

    # the Heads page started the job, then its run was stopped from the header: nothing waits for the job now
    job = jobs.start(ws, "importance", "Importance (gradient, 200 examples)", importance)
    page(at, "2_Attention")                   # another page: the job is listed in the sidebar
    assert_clean(at, "attention while the job runs")
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "Still running" in side and "Importance (gradient, 200 examples)" in side and "elapsed" in side
    assert at.sidebar.button(key=f"sb-stop-{job.uid}") is not None
    assert not job.finished

    threading.Timer(1.0, release.set).start()
    page(at, "3_Heads")                       # back on its page, without clicking: it shows the job and its result
    assert_clean(at, "heads picks the job up")
    assert job.finished and job.result == "done"
    assert any("done after" in str(getattr(p, "proto", p)) for p in at.get("progress"))
    assert any(h.value == "Ranking" for h in at.subheader)               # the result arrived
    assert jobs.get(ws, "importance") is None

    # the sidebar's Stop stops a running job
    release.clear()
    job = jobs.start(ws, "importance", "Importance again", importance)
    page(at, "2_Attention")
    at.sidebar.button(key=f"sb-stop-{job.uid}").click().run()
    assert job.stop_requested
    release.set()


def test_names_are_unique_and_say_what_was_done():
    from axlab.compress import Step
    from ui.names import budget_name, hand_name, recipe_name, step_name, unique
    assert budget_name(0.4, 29, 72) == "heads-40% (29 of 72)"
    assert [hand_name(k, 72) for k in (1, 3, 72)] == ["hand-1-head", "hand-3-heads", "hand-all-72-heads"]
    assert unique("int8", {"int8", "int8-2"}) == "int8-3" and unique("int8", set()) == "int8"
    assert step_name(Step("quantize_gpfq", bits=3, group_size=64, embeddings=True)) == "gpfq3-g64-emb"
    assert step_name(Step("quantize_rtn", bits=4, group_size=None)) == "rtn4"
    assert recipe_name([Step("prune_heads", heads={"0": [1, 2]}), Step("quantize_int8")], 8) == "heads-2-of-8+int8"


def test_heads_every_method_ranks_low_and_the_agreement_in_words():
    import pandas as pd

    from ui.insight import agreement_words, low_in_all
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = a.clone()
    b[0, 0], b[0, 1] = 100.0, 0.5                                       # b ranks head (0, 0) high
    assert low_in_all({"a": a, "b": b}, 0.25) == [(0, 1), (0, 2)]
    table = pd.DataFrame([[1.0, -0.19], [-0.19, 1.0]], index=["x", "y"], columns=["x", "y"])
    assert "barely agree" in agreement_words(table)
    table = pd.DataFrame([[1.0, 0.9], [0.9, 1.0]], index=["x", "y"], columns=["x", "y"])
    assert "agree" in agreement_words(table) and "barely" not in agreement_words(table)


def test_quantize_page_offers_the_gptq_reference(tiny_folder):
    """GPTQ on the Quantize page: the same calibration draw as GPFQ's, its own recipe step and name."""
    at = new_app(tiny_folder, measure_n=60, latency_runs=5)
    page(at, "5_Quantize")
    assert_clean(at, "quantize page")
    at.radio(key="quant_method").set_value("GPTQ (reference)").run()
    at.slider(key="gptq_n").set_value(32).run()
    at.select_slider(key="quant_bits").set_value(3).run()
    assert at.text_input(key="quant_name").value == "gptq3"
    at.button(key="quant_go").click().run()
    assert_clean(at, "gptq")
    v = next(v for v in _variants(at) if v.name == "gptq3")
    assert v.recipe[-1] == {"op": "quantize_gptq", "params": {"bits": 3, "n_calibration": 32, "group_size": None,
                                                               "embeddings": False, "act_order": False}}
    assert v.measurements["size_bytes"] < next(b for b in _variants(at) if b.name == "base").measurements["size_bytes"]


def test_quantize_page_packs_the_rest_for_deployment(tiny_folder):
    """'Pack the rest': the method's step, then quantize_rest (int8 head, k-bit word table, 8-bit positions)."""
    at = new_app(tiny_folder, measure_n=60, latency_runs=5)
    page(at, "5_Quantize")
    at.radio(key="quant_method").set_value("Round-to-nearest (RTN)").run()
    assert at.selectbox(key="quant_pack_bits").disabled
    at.checkbox(key="quant_pack").check().run()
    at.selectbox(key="quant_pack_bits").set_value(4).run()
    assert "pack the rest: int8 for the remaining fp32 layers, 4-bit word table" in " ".join(m.value for m in at.markdown)
    at.text_input(key="quant_name").input("rtn4-packed").run()
    at.button(key="quant_go").click().run()
    assert_clean(at, "pack")
    v = next(v for v in _variants(at) if v.name == "rtn4-packed")
    assert [s["op"] for s in v.recipe[-2:]] == ["quantize_rtn", "quantize_rest"]
    assert v.recipe[-1]["params"] == {"embedding_bits": 4, "position_bits": 8}
    sizes = {b.name: b.measurements["size_bytes"] for b in _variants(at)}
    assert sizes["rtn4-packed"] < 0.5 * sizes["base"]
    # the task's vocabulary first: prune_vocab, then the method, then the rest (the bench's smallest recipe)
    at.checkbox(key="quant_vocab").check().run()
    assert "keep only the vocabulary the task uses; RTN" in " ".join(m.value for m in at.markdown)
    at.text_input(key="quant_name").input("vocab-rtn4-packed").run()
    at.button(key="quant_go").click().run()
    assert_clean(at, "vocab")
    v = next(v for v in _variants(at) if v.name == "vocab-rtn4-packed")
    assert [s["op"] for s in v.recipe] == ["prune_vocab", "quantize_rtn", "quantize_rest"]
    assert v.recipe[0]["params"]["oov"] == "nearest"
    assert v.measurements["size_bytes"] < sizes["rtn4-packed"]
