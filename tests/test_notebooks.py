"""The teaching notebooks run top to bottom on the default model (small configuration).

Each notebook starts with a cell tagged ``parameters``; the test inserts a cell right
after it that overrides those values with small sizes (the way papermill injects
parameters), executes the notebook in a fresh python3 kernel with nbclient (any cell
error fails the test), then asks the kernel for the notebook's ``SUMMARY`` dict. The
conclusion the reader sees is built from that dict, so the checks below are on the
figures the run itself measured.

Fast checks (no kernel): each notebook and its jupytext percent-format twin (.py) hold
the same cells, have no outputs, and have a parameters cell.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["01_tour.ipynb", "02_which_heads_matter.ipynb", "03_axformer.ipynb", "04_quantization.ipynb",
             "05_putting_it_together.ipynb", "06_vision.ipynb"]

# Small configurations: every code path runs, on the real default model, in well under a minute each
# on two quiet cores. The AxFormer settings are the same in 03 and 05, so 05 reuses 03's cached search.
SMALL_SEARCH = dict(N_VAL=32, SEARCH_LAYERS=[5], FFN_GROUPS=2, TOPK_VALUES=(8,), SIGNIFICANCE=0.0)
TEST_PARAMETERS = {
    "01_tour.ipynb": dict(N_EXAMPLES=48),
    "02_which_heads_matter.ipynb": dict(N_IMPORTANCE=8, N_EVAL=48, FRACTIONS=(0.0, 0.5), RANDOM_SEEDS=(0,),
                                        CAPTUM_STEPS=2),
    "03_axformer.ipynb": dict(N_TEST=64, REUSE_CACHED_SEARCH=False, LATENCY_RUNS=(5, 2), DISTILL_STEPS=3,
                              DISTILL_BATCH=8, N_IMPORTANCE=16, **SMALL_SEARCH),
    "04_quantization.ipynb": dict(N_CALIBRATION=32, N_TEST=64, BITS=(4,), WITH_ONNX=False, LATENCY_RUNS=(5, 2),
                                  SPARSITY_THRESHOLDS=(), AVG_BITS=3.0, MIXED_CANDIDATES=(2, 4),
                                  N_SENSITIVITY=8, GPFQ_OPTIONS={"scale_grid": None}, LEVER_BITS=4),
    "05_putting_it_together.ipynb": dict(N_TEST=64, REUSE_CACHED_SEARCH=True, LATENCY_RUNS=(5, 2), QUANT_METHOD="rtn",
                                         QUANT_BITS=4, **SMALL_SEARCH),
    "06_vision.ipynb": dict(N_STATS=40, N_EVAL=300, IG_STEPS=32, SD_STEPS=20, SD_BATCH=32),
}
TIMEOUT_S = 900          # per cell: generous, the machine may be shared
SUMMARY_MARK = "AXLAB_SUMMARY="


def parameters_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return i
    raise AssertionError("no cell tagged 'parameters'")


def inject_parameters(nb, values: dict):
    """A copy of ``nb`` with a cell setting ``values`` right after the parameters cell."""
    nb = copy.deepcopy(nb)
    source = "# injected by the tests\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(parameters_index(nb) + 1, cell)
    return nb


def execute(name: str, values: dict):
    """Run notebook ``name`` with ``values`` injected; return (executed notebook, SUMMARY, seconds)."""
    from nbclient import NotebookClient

    nb = inject_parameters(nbformat.read(NB_DIR / name, as_version=4), values)
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json\nprint({SUMMARY_MARK!r} + _json.dumps(SUMMARY, default=float))"))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NB_DIR)}}).execute()
    seconds = time.perf_counter() - t0
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    summary = json.loads(out.split(SUMMARY_MARK, 1)[1])
    artifacts = Path(os.environ.get("AXLAB_NOTEBOOK_ARTIFACTS", NB_DIR.parent / "test-artifacts" / "notebooks"))
    artifacts.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, artifacts / name)          # the executed notebook, for a look at the figures
    return nb, summary, seconds


def conclusion_text(nb) -> str:
    """The Markdown the conclusion cell displayed (the last display before the SUMMARY cell)."""
    for cell in reversed(nb.cells[:-1]):
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "text/markdown" in data:
                return data["text/markdown"]
    raise AssertionError("no Markdown conclusion was displayed")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------
# fast checks on the committed files
# ---------------------------------------------------------------------------------------------

def _pair_text(name: str) -> tuple[str, str]:
    """(the .py twin as committed, the .py text jupytext makes from the committed .ipynb)."""
    import jupytext
    nb = jupytext.read(NB_DIR / name)
    return (NB_DIR / name).with_suffix(".py").read_text(), jupytext.writes(nb, fmt="py:percent")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_pairs_are_in_sync(name):
    """Each .ipynb has a percent-format .py twin (the reviewed source) with the same cells.

    Fix a failure with ``jupytext --sync notebooks/*.ipynb`` (the newer file of a pair wins).
    """
    import jupytext
    committed, from_ipynb = _pair_text(name)
    assert committed == from_ipynb, f"{name} and its .py twin differ: run `jupytext --sync notebooks/{name}`"
    meta = jupytext.read(NB_DIR / name).metadata.get("jupytext", {})
    assert meta.get("formats") == "ipynb,py:percent", "the notebook must be paired (jupytext --set-formats)"
    # and the other direction: the .py twin holds the same cells as the .ipynb
    a = jupytext.read(NB_DIR / name)
    b = jupytext.read((NB_DIR / name).with_suffix(".py"))
    assert [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]


def test_pair_check_catches_an_edit(tmp_path):
    """The check above fails when one side of a pair changes and the other does not."""
    import jupytext
    nb = jupytext.read(NB_DIR / NOTEBOOKS[0])
    nb.cells[0].source += "\nan edit made in JupyterLab"
    assert jupytext.writes(nb, fmt="py:percent") != (NB_DIR / NOTEBOOKS[0]).with_suffix(".py").read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs must be stripped"
    assert parameters_index(nb) == nb.cells.index(code[0]), "the first code cell must be the parameters cell"
    params = {}
    exec(nb.cells[parameters_index(nb)].source, {}, params)      # plain assignments only
    assert set(TEST_PARAMETERS[name]) <= set(params), "the tests override only parameters the notebook has"
    assert "SUMMARY" in code[-1].source and "Markdown(" in code[-1].source, "conclusion computed from SUMMARY"


def test_injection_overrides_parameters():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("x"), nbformat.v4.new_code_cell("N = 1000", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(N)")]
    out = inject_parameters(nb, {"N": 8, "T": (1, 2)})
    assert [c.source for c in nb.cells][1] == "N = 1000"        # input untouched
    ns: dict = {}
    for c in out.cells[1:3]:
        exec(c.source, {}, ns)
    assert ns == {"N": 8, "T": (1, 2)}


# ---------------------------------------------------------------------------------------------
# execution on the default model
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_model_ready(default_bundle):
    """Build (once) and cache the default model before a kernel tries to load it."""
    return default_bundle


@pytest.mark.slow
def test_01_tour(default_model_ready):
    nb, s, _ = execute("01_tour.ipynb", TEST_PARAMETERS["01_tour.ipynb"])
    assert s["n_examples"] == TEST_PARAMETERS["01_tour.ipynb"]["N_EXAMPLES"]
    assert s["accuracy"] > 0.6                      # the fine-tuned default model, not chance
    assert 0 <= s["most_local"][2] <= s["most_global"][2]
    text = conclusion_text(nb)
    assert f"{s['accuracy']:.1%}" in text and f"{s['most_local'][2]:.2f}" in text


@pytest.mark.slow
def test_02_which_heads_matter(default_model_ready):
    p = TEST_PARAMETERS["02_which_heads_matter.ipynb"]
    nb, s, _ = execute("02_which_heads_matter.ipynb", p)
    curve = s["curve"]
    assert {r["fraction"] for r in curve} == set(p["FRACTIONS"])
    assert {r["method"] for r in curve} == {"gradient", "ablation", "captum", "random"}
    at_zero = {r["accuracy"] for r in curve if r["fraction"] == 0.0}
    assert len(at_zero) == 1                         # removing nothing is the same model for every method
    assert all(0 <= r["accuracy"] <= 1 and r["n_eval"] == p["N_EVAL"] for r in curve)
    assert -1 <= s["spearman_gradient_ablation"] <= 1
    assert f"{s['best_accuracy']:.3f}" in conclusion_text(nb)


@pytest.mark.slow
def test_03_axformer(default_model_ready):
    p = TEST_PARAMETERS["03_axformer.ipynb"]
    nb, s, _ = execute("03_axformer.ipynb", p)
    assert s["n_val"] == p["N_VAL"] and s["n_test"] == p["N_TEST"]
    assert s["final_val_loss"] <= s["base_val_loss"] + 1e-9      # tolerance 0: a change is kept only if it helps
    assert s["candidates_tried"] > 0
    for key in ("base", "axformer", "pruned_more", "distilled"):
        assert 0 <= s["accuracy"][key] <= 1 and finite(s["latency_b1_ms"][key]) and s["size_mb"][key] > 0
    assert s["size_mb"]["pruned_more"] < s["size_mb"]["base"]
    assert f"{s['accuracy']['distilled']:.3f}" in conclusion_text(nb)


@pytest.mark.slow
def test_04_quantization(default_model_ready):
    p = TEST_PARAMETERS["04_quantization.ipynb"]
    nb, s, _ = execute("04_quantization.ipynb", p)
    assert s["n_test"] == p["N_TEST"]
    assert set(s["bits"]) == set(p["BITS"])
    for row in s["by_bits"]:
        assert 0 <= row["rtn"] <= 1 and 0 <= row["gpfq"] <= 1
    assert 0 <= s["gpfq_better_layers"] <= s["n_layers_compared"] and s["n_layers_compared"] > 0
    assert all(0 <= r["zeros"] <= 1 for r in s["sparsity"])
    assert s["mixed_avg_bits"] <= p["AVG_BITS"] + 1e-9
    assert f"{s['mixed_accuracy']:.3f}" in conclusion_text(nb)
    assert [r["variant"] for r in s["levers"]] == ["greedy pass only", "+ refinement",
                                                   "+ refinement + outliers (defaults)"]
    for r in s["levers"]:
        assert r["kl_to_fp32"] >= 0 and 0 <= r["agreement"] <= 1
        assert f"{r['kl_to_fp32']:.4f}" in conclusion_text(nb)


@pytest.mark.slow
def test_05_putting_it_together(default_model_ready):
    p = TEST_PARAMETERS["05_putting_it_together.ipynb"]
    nb, s, _ = execute("05_putting_it_together.ipynb", p)
    assert s["n_test"] == p["N_TEST"]
    assert len(s["variants"]) >= 4 and any(s["pareto"].values())
    assert s["reload_max_abs_diff"] < 1e-4            # the exported folder reloads to the same logits
    assert s["replay_max_abs_diff"] < 1e-4            # the recipe rebuilds the same variant
    assert s["reload_accuracy"] == s["exported_accuracy"]
    assert s["exported"] in conclusion_text(nb)


@pytest.fixture(scope="session")
def default_vision_ready():
    """Build (once) and cache the default vision model (MNIST ViT) before a kernel loads it."""
    from axlab.core.loading import load_model
    from axlab.core.train_vision import prepare_vision
    prepare_vision()
    return load_model("default-vision")


@pytest.mark.slow
def test_06_vision(default_vision_ready):
    p = TEST_PARAMETERS["06_vision.ipynb"]
    nb, s, _ = execute("06_vision.ipynb", p)
    n_layers = len(s["exits_base"])
    assert s["n_eval"] == p["N_EVAL"] and n_layers == default_vision_ready.n_layers
    assert s["accuracy"] > 0.95                                   # the trained MNIST ViT, not chance
    assert abs(s["exits_base"][-1] - s["accuracy"]) < 1e-9        # the last exit is the model's own prediction
    assert 0 <= s["rollout_on_ink"] <= 1
    assert s["distance_first_layer_px"] >= 0 and s["distance_last_layer_px"] >= 0
    assert abs(s["ig_sum"] - s["ig_target_change"]) < 0.05       # integrated gradients' completeness
    for key in ("exits_control", "exits_sd"):
        assert len(s[key]) == n_layers and all(0 <= a <= 1 for a in s[key])
    text = conclusion_text(nb)
    assert f"{s['mean_intermediate_sd']:.3f}" in text and f"{s['shifted_sd']:.3f}" in text


def test_saving_in_jupyter_updates_the_pair(tmp_path):
    """What JupyterLab does on save (PUT to the contents API) rewrites both files of a pair."""
    import json as _json
    import shutil
    import socket
    import subprocess
    import sys
    import urllib.request

    import jupytext
    for suffix in (".ipynb", ".py"):
        shutil.copy(NB_DIR / f"01_tour{suffix}", tmp_path / f"01_tour{suffix}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "axlab-test"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         "--ServerApp.port_retries=0", "--allow-root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/01_tour.ipynb"
        headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        deadline = time.monotonic() + 90          # a cold start loads every server extension
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                    model = _json.load(r)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "jupyter server did not start"
                time.sleep(0.3)
        model["content"]["cells"][0]["source"] += "\n\nAn edit saved from JupyterLab."
        body = _json.dumps({"type": "notebook", "format": "json", "content": model["content"]}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="PUT"),
                                    timeout=30) as r:
            assert r.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "An edit saved from JupyterLab." in (tmp_path / "01_tour.py").read_text()
    nb = jupytext.read(tmp_path / "01_tour.ipynb")
    assert jupytext.writes(nb, fmt="py:percent") == (tmp_path / "01_tour.py").read_text()
