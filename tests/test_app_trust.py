"""The workbench's numbers a user can trust (issue 18): interleaved speed-ups with their spread, the user's
own splits, labels checked against the model, per-class figures on Compare, fine-tuning from the app.

Driven by AppTest on tiny models (helpers from tests/test_app.py).
"""

import re

import pytest
from test_app import _variants, assert_clean, errors, new_app, page


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from axlab.core.testing import save_tiny
    return str(save_tiny(tmp_path_factory.mktemp("tiny-trust") / "bert", "bert"))


def _successes(at) -> str:
    return "\n".join(s.value for s in at.success)


def test_a_new_variant_shows_a_speedup_measured_interleaved_with_its_spread(tiny_folder):
    at = page(new_app(tiny_folder, measure_n=60, latency_runs=10), "4_Prune")
    at.multiselect(key="hand_heads").set_value(["L0.H1", "L1.H2"]).run()
    at.button(key="hand_go").click().run()
    assert_clean(at, "prune by hand")
    msg = _successes(at)
    assert "measured interleaved with the base" in msg
    assert re.search(r"\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d over the rounds\)", msg), msg      # ratio and its range
    v = {x.name: x for x in _variants(at)}["hand-2-heads"]
    vs = v.measurements["latency_vs_base"]["b1"]
    assert vs["rounds"] >= 2 and vs["speedup_range"][0] <= vs["speedup"] <= vs["speedup_range"][1]
    assert isinstance(vs["within_noise"], bool)
    # Compare: the interleaved ratio in the table, and the per-class view with a confusion heatmap
    page(at, "6_Compare")
    assert_clean(at, "compare")
    at.selectbox(key="cmp_pc_pick").set_value("hand-2-heads").run()
    assert any("precision" in df.value.columns for df in at.dataframe)
    assert any('"heatmap"' in c.proto.spec for c in at.get("plotly_chart"))


def test_own_split_files_are_used_and_the_change_is_confirmed(tiny_folder):
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    at.radio(key="split_mode").set_value("Separate train / validation / test files").run()

    def csv(n, start):
        return ("sentence,verdict\n" + "\n".join(f"line {i} of the data,{'LABEL_1' if i % 2 else 'LABEL_0'}"
                                                    for i in range(start, start + n))).encode()
    at.file_uploader(key="upload_train").set_value(("tr.csv", csv(40, 0), "text/csv")).run()
    at.file_uploader(key="upload_test").set_value(("te.csv", csv(12, 100), "text/csv")).run()
    at.text_input(key="text_col").input("sentence").run()
    at.text_input(key="label_col").input("verdict").run()
    at.button(key="load_data").click().run()
    assert_clean(at, "own splits")
    msg = _successes(at)
    assert "12 test" in msg and "as given" in msg and "carved validation" in msg, msg
    assert at.session_state["dataset"].endswith(".json")


def test_labels_the_model_does_not_know_are_an_error_on_the_page(tiny_folder):
    at = page(new_app(tiny_folder), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    data = "text,label\n" + "\n".join(f"text {i},{'abc'[i % 3]}" for i in range(60))
    at.file_uploader(key="upload").set_value(("three.csv", data.encode(), "text/csv")).run()
    at.button(key="load_data").click().run()
    assert not at.exception
    assert "3 classes" in errors(at) and "only 2" in errors(at) and "LABEL_0" in errors(at)
    assert at.button(key="measure_base").disabled


def test_fine_tune_from_the_page_makes_the_current_model(tmp_path, monkeypatch):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path / "home"))       # the trained model goes to a scratch cache
    at = page(new_app("default"), "1_Model_and_data")
    at.selectbox(key="dataset_choice").set_value("Upload a CSV/TSV").run()
    words = {"cat": ["meow purr whiskers", "kitten naps"], "dog": ["woof bark fetch", "puppy leash"],
             "bird": ["tweet wings nest", "feathers fly"]}
    rows = [f"{words[c][i % 2]} {i},{c}" for i in range(30) for c in words]
    at.file_uploader(key="upload").set_value(("pets.csv", ("text,label\n" + "\n".join(rows)).encode(),
                                                          "text/csv")).run()
    at.button(key="load_data").click().run()
    at.number_input(key="ft_epochs").set_value(1).run()
    at.number_input(key="ft_max_length").set_value(16).run()
    at.button(key="ft_start").click().run()
    assert not at.exception, [e.message for e in at.exception]
    msg = _successes(at)
    assert "Fine-tuned" in msg and "test accuracy" in msg, (msg, errors(at))
    from axlab.core.loading import load_model
    assert sorted(load_model(at.session_state["source"]).labels) == ["bird", "cat", "dog"]
