"""Sweeps: the spec, the front, and trials as Ray tasks on a local Ray (2 CPUs) with tiny models.

Ray tests: a 4-trial sweep lands in the store (same accuracies as the sequential
backend); a raising trial is recorded as failed; a worker killed mid-trial is retried;
a stopped sweep resumes without redoing finished trials; head ablation on Ray equals
the sequential one; no Ray process is left afterwards.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from axlab.core.data import Splits
from axlab.core.errors import AxlabError
from axlab.core.loading import ModelBundle
from axlab.core.progress import Stopped
from axlab.core.testing import tiny_model, tiny_split, tiny_tokenizer
from axlab.store.variants import VariantStore
from axlab.sweep import SweepSpec, load, run
from axlab.sweep.pareto import choose, pareto_mask
from axlab.sweep.trial import plan, run_trial

ray = pytest.importorskip("ray", reason="ray is not installed (see requirements.txt)")


def tiny_bundle(arch="bert", num_labels=2, seed=0):
    labels = [f"class_{i}" for i in range(num_labels)][::-1]        # names not in index order
    return ModelBundle(model=tiny_model(arch, num_labels=num_labels, seed=seed), tokenizer=tiny_tokenizer(),
                       labels=labels, source=f"tiny-{arch}", path="")


def tiny_splits(num_labels=2):
    return Splits(name="tiny", label_names=[f"class_{i}" for i in range(num_labels)],
                  train=tiny_split(48, 1, num_labels), validation=tiny_split(24, 2, num_labels),
                  test=tiny_split(24, 3, num_labels), seed=0, file_hash="0" * 16, source_file="")


def tiny_spec(arch="bert", **kw) -> SweepSpec:
    space = kw.pop("space", {"head_fraction": [0.25, 0.5], "quantizer": ["none", "int8"]})
    return SweepSpec(model=f"tiny-{arch}", dataset="tiny", space=space, n_val=None, n_test=None, latency_runs=2,
                     **{"budget": 3, **kw})


def our_ray_pids() -> set[int]:
    """Processes Ray started for this test process (raylet, GCS, workers...)."""
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True)}


def assert_gone(pids: set[int]) -> None:
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"Ray left processes behind: {alive}"


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray (2 CPUs) for the fault tests; the sweep reuses it and leaves it running."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    pids = our_ray_pids()
    try:
        yield
    finally:
        ray.shutdown()
    assert_gone(pids)


# ----------------------------------------------------------------------------- spec

def test_spec_round_trips_json_and_yaml(tmp_path):
    spec = SweepSpec(space={"head_fraction": [0.0, 0.3], "importance": ["gradient", "random"],
                            "quantizer": ["none", "gpfq"], "bits": [3, 4], "n_calibration": [32],
                            "axformer_tolerance": [None, 0.01], "distill": [False, True]},
                     sampling="random", budget=7, sample_seed=3, name="mine")
    assert SweepSpec.from_json(spec.to_json()) == spec
    assert SweepSpec.load(spec.save(tmp_path / "s.json")) == spec
    assert SweepSpec.load(spec.save(tmp_path / "s.yaml")) == spec
    assert spec.sweep_id == SweepSpec.from_dict({**spec.to_dict(), "name": "other"}).sweep_id
    assert spec.sweep_id != SweepSpec.from_dict({**spec.to_dict(), "budget": 6}).sweep_id


def test_the_grid_has_no_duplicates_and_random_sampling_is_seeded():
    space = {"head_fraction": [0.0, 0.25], "importance": ["gradient", "ablation"], "quantizer": ["none", "int8", "rtn"],
             "bits": [4, 8]}
    points = SweepSpec(space=space).space.points()
    # heads: off (1) or 0.25 x 2 methods (2) = 3; quantizers: none, int8, rtn4, rtn8 = 4
    assert len(points) == 12 == len({json.dumps(p, sort_keys=True) for p in points})
    assert {"quantizer": "int8"} in points and not any("bits" in p and p["quantizer"] == "int8" for p in points)
    grid = SweepSpec(space=space, budget=5).trials()
    assert grid[0] == {} and grid[1:] == [p for p in points if p][:5]
    a = SweepSpec(space=space, sampling="random", budget=4, sample_seed=1).trials()
    assert a == SweepSpec(space=space, sampling="random", budget=4, sample_seed=1).trials()
    assert a != SweepSpec(space=space, sampling="random", budget=4, sample_seed=2).trials()
    assert SweepSpec(space=space, sampling="random", budget=6, sample_seed=1).trials()[:5] == a   # extends


@pytest.mark.parametrize("bad, word", [
    ({"space": {"quantizer": ["fp4"]}}, "quantizer"),
    ({"space": {"head_fraction": [1.5]}}, "head_fraction"),
    ({"space": {"heads": [0.1]}}, "heads"),
    ({"sampling": "bayes"}, "sampling"),
    ({"budget": 0}, "budget"),
    ({"objectives": ["val_accuracy"]}, "bjectives"),
    ({"threads": 0}, "threads"),
    ({"workers": 2}, "workers"),
    ({"max_accuracy_drop": "1%"}, "max_accuracy_drop"),
    ({"n_val": 0}, "n_val"),
])
def test_a_bad_spec_says_what_to_fix(bad, word):
    with pytest.raises(AxlabError) as e:
        SweepSpec.from_dict(bad)
    assert word in e.value.message and e.value.hint


def test_pareto_front_over_three_objectives_and_choice_on_validation():
    df = pd.DataFrame({"val_accuracy": [0.80, 0.79, 0.78, 0.70, 0.79, np.nan],
                       "accuracy":     [0.80, 0.70, 0.90, 0.70, 0.99, 0.99],       # test: never used to choose
                       "latency_b1_ms": [10, 6, 5, 5, 7, 1], "size_bytes": [100, 80, 90, 50, 80, 1]})
    obj = ["val_accuracy", "latency_b1_ms", "size_bytes"]
    # row 4 is dominated by row 1 (same accuracy and size, slower); row 5 has no validation accuracy
    assert pareto_mask(df, obj).tolist() == [True, True, True, True, False, False]
    assert choose(df, obj, base_accuracy=0.80, max_drop=0.01) == 1      # fastest within one point of the base
    assert choose(df, obj, base_accuracy=0.80, max_drop=0.025) == 2
    assert choose(df, obj, base_accuracy=0.95, max_drop=0.01) == 0      # none within: the most accurate
    # on two objectives rows 1 and 4 tie (both stay); row 2 is beaten by row 1
    assert pareto_mask(df, ["val_accuracy", "size_bytes"]).tolist() == [True, True, False, True, True, False]


@pytest.mark.parametrize("arch, num_labels", [("distilbert", 3), ("electra", 2)])
def test_plan_gives_concrete_recipes_that_replay(arch, num_labels, one_thread):
    bundle, splits = tiny_bundle(arch, num_labels), tiny_splits(num_labels)
    spec = tiny_spec(arch, space={"head_fraction": [0.25], "importance": ["gradient", "random"],
                                  "ffn_fraction": [0.0, 0.5], "quantizer": ["rtn"], "bits": [4]}, budget=None)
    items = plan(spec, bundle, splits)
    assert [i["label"] for i in items] == ["base", "h0.25-gradient+rtn4", "h0.25-gradient+ffn0.5+rtn4",
                                           "h0.25-random+rtn4", "h0.25-random+ffn0.5+rtn4"]
    assert len({i["key"] for i in items}) == len(items)
    assert items[0]["recipe"] == []
    heads = items[1]["recipe"][0]["params"]["heads"]
    assert sum(len(v) for v in heads.values()) == round(0.25 * 2 * 4)          # 2 layers x 4 heads
    assert items[2]["recipe"][1]["op"] == "prune_ffn"
    assert plan(spec, bundle, splits) == items                                  # deterministic
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    out = run_trial(bundle.model, bundle.tokenizer, splits, items[2], spec.trial_settings())
    assert [s["op"] for s in out["recipe"]] == ["prune_heads", "prune_ffn", "quantize_rtn"]
    assert out["measurements"]["validation"]["n"] == len(splits.validation)
    assert out["measurements"]["n"] == len(splits.test) and out["measurements"]["size_bytes"] > 0
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())   # base untouched


# ----------------------------------------------------------------------------- running

def measured(result) -> dict:
    df = result.table()
    return {r.label: (r.val_accuracy, r.accuracy, r.size_bytes) for r in df.itertuples() if r.status == "ok"}


def test_a_4_trial_sweep_on_ray_lands_in_the_store_like_the_sequential_one(tmp_path):
    bundle, splits = tiny_bundle("roberta", 3, seed=1), tiny_splits(3)
    spec = tiny_spec("roberta")
    seq = run(spec, backend="sequential", store=VariantStore(tmp_path / "seq.sqlite"), bundle=bundle, splits=splits,
              progress=False)
    assert ray.is_initialized() is False
    updates = []
    store = VariantStore(tmp_path / "ray.sqlite")
    pids: set[int] = set()

    def on_update(state):
        updates.append(state)
        pids.update(our_ray_pids())

    res = run(spec, backend="ray", workers=2, store=store, bundle=bundle, splits=splits, progress=False,
              on_update=on_update)
    assert res.counts == {"ok": 4, "failed": 0, "total": 4} and not res.stopped and res.workers == 2
    assert len(res.ran) == 4 and not res.skipped
    variants = store.list(workspace="default")
    assert len(variants) == 4
    assert all(v.measurements["sweep"]["id"] == spec.sweep_id and spec.sweep_id in v.notes for v in variants)
    assert {v.name for v in variants} == {f"sweep-{spec.sweep_id[:6]}-{t}" for t in
                                          ("base", "h0.25-gradient", "h0.25-gradient+int8", "h0.5-gradient")}
    # same trials, same measured accuracies and sizes as one after another in this process
    assert measured(res) == measured(seq)
    workers = {t["worker"] for t in res.trials}
    assert os.getpid() not in {int(w.split(":")[1]) for w in workers}      # they ran in Ray workers
    df = res.table()
    assert df.pareto.any() and df.chosen.sum() == 1 and df[df.chosen].pareto.all()
    assert df.recipe.str.contains("remove").sum() == 3
    assert updates[-1]["done"] == 4 and max(u["running"] for u in updates) >= 1
    assert not ray.is_initialized()
    assert pids, "no Ray process was seen during the sweep"
    assert_gone(pids)


def faulty(marker_dir: str, raise_on: str, kill_on: str):
    """A trial function that raises for one trial and kills its own worker the first time it runs another."""
    def fn(model, tokenizer, splits, trial, settings):
        if trial["label"] == raise_on:
            raise RuntimeError("boom: this trial always fails")
        if trial["label"] == kill_on:
            marker = Path(marker_dir) / "killed-once"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
        return run_trial(model, tokenizer, splits, trial, settings)
    return fn


def test_a_raising_trial_fails_alone_and_a_killed_worker_is_retried(shared_ray, tmp_path):
    bundle, splits = tiny_bundle("bert", 2, seed=2), tiny_splits()
    store = VariantStore(tmp_path / "v.sqlite")
    spec = tiny_spec(space={"head_fraction": [0.25, 0.5], "importance": ["ablation"], "quantizer": ["none", "int8"]})
    res = run(spec, store=store, bundle=bundle, splits=splits, progress=False,      # ablation importance on Ray too
              trial_fn=faulty(str(tmp_path), raise_on="h0.25-ablation+int8", kill_on="h0.5-ablation"))
    status = {t["label"]: t for t in res.trials}
    assert status["h0.25-ablation+int8"]["status"] == "failed"
    assert "RuntimeError: boom" in status["h0.25-ablation+int8"]["error"]
    assert (tmp_path / "killed-once").exists()                             # the worker did die once...
    killed = int((tmp_path / "killed-once").read_text())
    assert status["h0.5-ablation"]["status"] == "ok"                       # ...and the retry finished the trial
    assert int(status["h0.5-ablation"]["worker"].split(":")[1]) != killed
    assert res.counts == {"ok": 3, "failed": 1, "total": 4}
    assert len(store.list()) == 3                                          # failures are not variants
    df = res.table()
    assert df[df.status == "failed"].error.str.contains("boom").all() and not df[df.status == "failed"].pareto.any()
    # a rerun retries the failed trial only (here it still fails), skipping the three measured ones
    again = run(spec, store=store, bundle=bundle, splits=splits, progress=False,
                trial_fn=faulty(str(tmp_path), raise_on="h0.25-ablation+int8", kill_on="none"))
    assert len(again.skipped) == 3 and len(again.ran) == 1 and again.counts["failed"] == 1


def test_a_stopped_sweep_keeps_its_trials_and_resumes_without_redoing_them(shared_ray, tmp_path):
    bundle, splits = tiny_bundle("bert", 2, seed=3), tiny_splits()
    store = VariantStore(tmp_path / "v.sqlite")
    spec = tiny_spec(budget=4)

    def stop_after_two(done, total, message):
        if done >= 2:
            raise Stopped()

    first = run(spec, store=store, bundle=bundle, splits=splits, progress=stop_after_two)
    assert first.stopped and 2 <= first.counts["ok"] < 5
    kept = {t["key"] for t in first.trials if t["status"] == "ok"}
    assert {v.measurements["sweep"]["trial"] for v in store.list()} == kept
    assert load(spec, store=store).counts["ok"] == len(kept)              # what the page sees
    second = run(spec, store=store, bundle=bundle, splits=splits, progress=False)
    assert not second.stopped and second.counts == {"ok": 5, "failed": 0, "total": 5}
    assert set(second.skipped) == kept and not kept & set(second.ran)
    assert len(second.ran) == 5 - len(kept)
    assert len(store.list()) == 5


def test_head_ablation_on_ray_equals_the_sequential_one(shared_ray, one_thread):
    from axlab.analysis.importance import head_ablation
    from axlab.compress.prune import prune_heads
    from axlab.sweep.ablation import head_chunks, ray_head_ablation
    model = prune_heads(tiny_model("distilbert", num_labels=3, seed=4, layers=3), {1: [0, 2]})   # uneven heads
    tok, split = tiny_tokenizer(), tiny_split(20, 5, 3)
    chunks = head_chunks(model, 4)
    assert sorted(h for c in chunks for h in c) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 3), (2, 0), (2, 1),
                                                    (2, 2), (2, 3)]
    assert all(len({layer for layer, _ in c}) == 1 for c in chunks)
    seq = head_ablation(model, tok, split, batch_size=8, cache_results=False)
    par = ray_head_ablation(model, tok, split, batch_size=8, cache_results=False)
    assert torch.isnan(par.loss[1, 0]) and torch.isnan(par.loss[1, 2])
    torch.testing.assert_close(par.loss, seq.loss, equal_nan=True, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(par.accuracy, seq.accuracy, equal_nan=True)
    assert par.base_loss == pytest.approx(seq.base_loss, abs=1e-6) and par.n == seq.n


def test_bad_backend_and_workers_are_refused(tmp_path):
    with pytest.raises(AxlabError, match="backend"):
        run(tiny_spec(), backend="dask", bundle=tiny_bundle(), splits=tiny_splits(), store=VariantStore(tmp_path / "s"))
    with pytest.raises(AxlabError, match="workers"):
        run(tiny_spec(), workers=0, bundle=tiny_bundle(), splits=tiny_splits(), store=VariantStore(tmp_path / "s"))


def test_every_step_kind_runs_and_its_stored_recipe_replays_to_the_same_accuracy(tmp_path, one_thread):
    from axlab.compress import apply_recipe
    from axlab.core.measure import evaluate
    from axlab.sweep.log import SweepLog
    bundle, splits = tiny_bundle("bert", 2, seed=5), tiny_splits()
    spec = tiny_spec(space={"head_fraction": [0.25], "importance": ["ablation"], "axformer_tolerance": [0.0],
                            "distill": [True], "distill_steps": 2, "quantizer": ["gpfq"], "bits": [4],
                            "n_calibration": [8]}, budget=None, include_base=False)
    store = VariantStore(tmp_path / "v.sqlite")
    res = run(spec, backend="sequential", store=store, bundle=bundle, splits=splits, progress=False)
    assert res.counts == {"ok": 1, "failed": 0, "total": 1}, res.trials
    (v,) = store.list()
    ops = [s["op"] for s in v.recipe]
    assert ops[0] == "prune_heads" and ops[-2:] == ["distill", "quantize_gpfq"]
    rebuilt = apply_recipe(bundle.model, v.recipe, tokenizer=bundle.tokenizer, splits=splits)
    assert evaluate(rebuilt, bundle.tokenizer, splits.validation)["accuracy"] == v.measurements["validation"]["accuracy"]
    saved = SweepLog(store.path).sweeps("default")
    assert saved[0]["id"] == spec.sweep_id and SweepSpec.from_dict(saved[0]["spec"]) == spec   # rerunnable
    assert saved[0]["state"] == "finished"


def test_ctrl_c_keeps_the_finished_trials(tmp_path):
    from axlab.sweep.log import SweepLog
    bundle, splits = tiny_bundle("distilbert", 2, seed=6), tiny_splits()
    store = VariantStore(tmp_path / "v.sqlite")

    def interrupted_at_third(model, tokenizer, splits, trial, settings):
        if trial["index"] == 2:
            raise KeyboardInterrupt
        return run_trial(model, tokenizer, splits, trial, settings)

    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec("distilbert"), backend="sequential", store=store, bundle=bundle, splits=splits, progress=False,
            trial_fn=interrupted_at_third)
    assert load(tiny_spec("distilbert"), store=store).counts["ok"] == 2 and len(store.list()) == 2
    assert SweepLog(store.path).sweeps("default")[0]["state"] == "interrupted"
    again = run(tiny_spec("distilbert"), backend="sequential", store=store, bundle=bundle, splits=splits,
                progress=False)
    assert len(again.skipped) == 2 and len(again.ran) == 2 and again.counts["ok"] == 4


# ----------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def tiny_cli_inputs(tmp_path_factory):
    from axlab.core.testing import save_tiny
    root = tmp_path_factory.mktemp("cli")
    folder = save_tiny(root / "model", "bert", num_labels=3)
    rows = ["text,label"] + [f'"{t}",{["neg", "neu", "pos"][y]}' for t, y in
                             zip(*(lambda s: (s.texts, s.labels))(tiny_split(90, 7, 3)))]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return folder, root / "data.csv"


def test_cli_sweep_prints_the_front_and_resumes(tiny_cli_inputs, tmp_path, capsys):
    from axlab.cli.main import main
    folder, data = tiny_cli_inputs
    spec = SweepSpec(model=str(folder), dataset=str(data), space={"head_fraction": [0.5], "quantizer": ["none", "rtn"],
                                                                  "bits": [8]}, n_val=None, n_test=None, latency_runs=2)
    path = spec.save(tmp_path / "spec.yaml")
    assert main(["sweep", str(path), "--backend", "sequential", "--json", "--workspace", "cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sweep_id"] == spec.sweep_id and out["counts"] == {"ok": 3, "failed": 0, "total": 3}
    assert len(out["trials"]) == 3 and out["front"] and out["chosen"]["label"] in {t["label"] for t in out["trials"]}
    assert any("remove 4 heads" in t["recipe"] for t in out["trials"])    # 2 layers x 4 heads, half of them
    assert main(["sweep", str(path), "--backend", "sequential", "--json", "--workspace", "cli"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ran"] == 0 and again["skipped"] == 3
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_importance_ablation_on_ray(shared_ray, tiny_cli_inputs, capsys):
    from axlab.cli.main import main
    folder, data = tiny_cli_inputs
    args = ["importance", str(folder), "--dataset", str(data), "--method", "ablation", "--limit", "12", "--no-cache",
            "--json"]
    assert main(args) == 0
    seq = json.loads(capsys.readouterr().out)["methods"]["ablation"]
    assert main(args + ["--ray"]) == 0
    par = json.loads(capsys.readouterr().out)["methods"]["ablation"]
    np.testing.assert_allclose(np.array(par["importance"], dtype=float), np.array(seq["importance"], dtype=float),
                               atol=1e-5)
    assert par["base_accuracy"] == seq["base_accuracy"]
