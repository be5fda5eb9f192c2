"""The benchmark command keeps working: `bench/run.py --quick` on a tiny model, and its analysis helpers.

The full benchmark (default model, all test reviews) is run by hand; see bench/README.md.
Nothing here asserts a timing: only that every row was measured and the outputs are well formed.
"""
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"

PEERS = {"fp32 PyTorch", "PyTorch dynamic int8", "ONNX Runtime fp32", "ONNX Runtime dynamic int8",
         "ONNX Runtime dynamic int8 (per-channel)", "ONNX Runtime optimizer + int8 (per-channel)", "RTN 4-bit",
         "GPTQ 4-bit (ONNX Runtime)"}
AXLAB = {"axlab fused fp32 (ONNX Runtime)", "axlab fused int8 (ONNX Runtime)", "AxFormer", "AxFormer + int8 (PyTorch)",
         "AxFormer + int8 (ONNX Runtime)", "GPFQ 3-bit", "GPFQ 4-bit", "axlab best combination"}


def _load_run_module():
    spec = importlib.util.spec_from_file_location("axlab_bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


bench = _load_run_module()


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    """One quick run on the tiny model in a fresh process (as a person would run it)."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--model", "tiny", "--threads", "1",
                           "--n-test", "24", "--student-steps", "2", "--rounds", "2", "--rounds-b1", "3", "--no-gpu",
                           "--out", str(out),
                           # a student from the base, one from the AxFormer result, one taught by the cached
                           # SmolLM2 table (made for the full training split: refused on the tiny world's slice)
                           "--student", "layers=0.5", "--student", "layers=0.67,ffn=0.25,start=axformer",
                           "--student", "layers=0.67,ffn=0.25,teacher=smollm2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "latest.json").read_text()), proc


def test_quick_run_writes_every_output(quick_result):
    out, res, proc = quick_result
    dated = [p for p in out.glob("bench-*.json")]
    assert len(dated) == 1 and json.loads(dated[0].read_text()) == res
    md = (out / "latest.md").read_text()
    html = (out / "latest.html").read_text()
    for r in res["rows"]:
        assert r["name"] in md
    assert "3 interleaved latency rounds at batch 1, 2 at batch 32" in md
    assert "Pareto front" in html and "<script src=\"http" not in html     # plotly inlined, works offline
    assert "| row |" in proc.stdout                                       # the table is printed too


def test_rerender_rewrites_the_outputs_from_the_json_alone(quick_result, tmp_path):
    """--rerender recomputes the targets from a run's rows and writes the same outputs, measuring nothing."""
    out, res, proc = quick_result
    changed = json.loads(json.dumps(res))
    changed["targets"] = {"stale": True}
    src = tmp_path / "old.json"
    src.write_text(json.dumps(changed))
    done = subprocess.run([sys.executable, str(RUN), "--rerender", str(src), "--out", str(tmp_path / "new")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads((tmp_path / "new" / "latest.json").read_text())
    assert again["targets"] == res["targets"] and again["rows"] == res["rows"]
    assert (tmp_path / "new" / "latest.md").read_text() == (out / "latest.md").read_text() == done.stdout
    assert [p.name for p in (tmp_path / "new").glob("bench-*.json")] == [p.name for p in out.glob("bench-*.json")]


def test_quick_run_schema_and_every_row_measured(quick_result):
    _, res, _ = quick_result
    for key in ("hardware", "threads", "versions", "seed", "rows", "targets", "config", "n_test"):
        assert key in res
    assert res["threads"] == 1 and res["config"]["quick"] is True
    assert res["versions"]["torch"] and res["versions"]["onnxruntime"]
    names = [r["name"] for r in res["rows"]]
    assert len(names) == len(set(names))
    assert PEERS <= set(names) and AXLAB <= set(names)
    assert any(n.startswith("heads -40%") for n in names)                 # Michel et al. peer
    for r in res["rows"]:
        for k in bench.REQUIRED_ROW_KEYS:
            assert k in r, (r["name"], k)
        assert r["group"] in ("peer", "axlab")
        assert r["group"] == ("peer" if r["name"] in PEERS or r["name"].startswith("heads") else "axlab")
        for k in ("accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "latency_b1_p90_ms",
                  "latency_b32_p90_ms", "speedup_b1", "compression"):
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]) and r[k] >= 0, (r["name"], k, r[k])
        assert 0 <= r["accuracy"] <= 1 and r["size_bytes"] > 0
        # the accuracy difference to fp32 carries its paired standard error (0 for fp32 against itself)
        se = r["accuracy_delta_se_points"]
        assert se >= 0 and (r["name"] != "fp32 PyTorch" or se == 0)
        assert r["latency_b1_p90_ms"] >= r["latency_b1_ms"] * 0.5
        # batch 1 sampled in more rounds than batch 32 (--rounds-b1 3, --rounds 2)
        assert len(r["latency_b1_rounds_ms"]) == res["config"]["rounds_b1"] == 3
        assert len(r["latency_b32_rounds_ms"]) == res["config"]["rounds"] == 2
        assert r["n_test"] == res["n_test"] == 24
    fp32 = next(r for r in res["rows"] if r["name"] == "fp32 PyTorch")
    assert fp32["speedup_b1"] == pytest.approx(1.0) and fp32["compression"] == pytest.approx(1.0)


def test_quick_run_gpu_columns_skipped_cleanly(quick_result):
    _, res, _ = quick_result
    assert res["gpu"] is None                    # --no-gpu (and CI has no GPU)
    assert not any("latency_b1_gpu_ms" in r for r in res["rows"])


def test_quick_run_sizes_follow_the_transforms(quick_result):
    """Sizes are real serialised sizes: int8 < fp32, vocabulary pruning shrinks the best combination."""
    _, res, _ = quick_result
    by = {r["name"]: r for r in res["rows"]}
    assert by["ONNX Runtime dynamic int8"]["size_bytes"] < by["ONNX Runtime fp32"]["size_bytes"]
    assert by["RTN 4-bit"]["size_bytes"] < by["fp32 PyTorch"]["size_bytes"]
    best = by["axlab best combination"]
    assert best["size_bytes"] < by["axlab fused int8 (ONNX Runtime)"]["size_bytes"]
    assert best["vocab"]["kept"] < best["vocab"]["vocab_size"]
    cands = res["notes"]["best_combination"]["candidates"]
    assert best["chosen"] in [c["candidate"] for c in cands]
    assert res["targets"]["best_axlab_row"] in by


def test_quick_run_deploys_what_it_compresses(quick_result):
    """The fused rows carry one attention node per layer; GPFQ's file is k-bit, below the int8 graph's."""
    _, res, proc = quick_result
    by = {r["name"]: r for r in res["rows"]}
    n_layers = 2                                                          # the tiny BERT
    assert by["axlab fused fp32 (ONNX Runtime)"]["attention_nodes"] == n_layers
    assert by["axlab fused fp32 (ONNX Runtime)"]["parity_max_abs_diff"] <= 1e-4
    assert by["GPFQ 4-bit"]["size_bytes"] < by["axlab fused int8 (ONNX Runtime)"]["size_bytes"]
    assert by["GPFQ 3-bit"]["runtime"] == by["GPFQ 4-bit"]["runtime"] == "onnxruntime"
    assert "com.microsoft:DynamicQuantizeMatMul" in by["GPFQ 4-bit"]["ops"]
    t = res["targets"]
    assert t["fastest_int8_peer_b1"] in by and by[t["fastest_int8_peer_b1"]]["group"] == "peer"
    assert t["fused_fp32_vs_unfused"]["attention_nodes"] == n_layers
    assert "GPFQ 4-bit" in t["gpfq4_goal"]
    cands = res["notes"]["best_combination"]["candidates"]
    assert {c["quantization"] for c in cands if "error" not in c} == {"int8-emb8", "int8-emb4", "gpfq4"}
    for c in cands:                                                       # the pre-declared paired rule
        if "error" not in c:
            z = c["val_delta_z"]
            assert c["qualifies"] == (z is None and c["val_delta_vs_fp32"] >= 0 or z is not None and z >= 1.0)
            assert ("val_latency_ms" in c) == c["qualifies"]               # only qualifying ones are timed
    chosen = next(c for c in cands if c["candidate"] == by["axlab best combination"]["chosen"])
    cap = res["notes"]["best_combination"]["size_cap_bytes"]
    i8 = min(r["size_bytes"] for r in res["rows"] if r["group"] == "peer" and "int8" in r["name"]
             and r["runtime"] == "onnxruntime")
    assert cap == int(i8 / 2.5)                                           # the size goal, from the int8 peers
    for c in cands:
        if "error" not in c:
            assert c["within_size_goal"] == (c["size_bytes"] <= cap)
    peer_lat = res["notes"]["best_combination"]["peer_val_latency_ms"]
    for c in cands:                          # the speed goal, against the int8 peers timed in the same rounds
        if c.get("qualifies"):
            assert set(peer_lat) == {"1", "32"}
            assert c["meets_speed_goal"] == (min(c["val_speedup_b1"], c["val_speedup_b32"]) >= 1.5)
    if chosen["qualifies"]:                  # goals are floors: the most accurate meeting them, else the fastest
        pool = [c for c in cands if c.get("qualifies") and c["within_size_goal"]] or \
            [c for c in cands if c.get("qualifies")]
        fast = [c for c in pool if c["meets_speed_goal"]]
        if fast:
            assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in fast)
        else:
            assert chosen["val_latency_ms"] == min(c["val_latency_ms"] for c in pool)
    assert "paired standard error" in res["notes"]["best_combination"]["rule"]
    # every quantized fused row stores its position table in 8 bits (two GatherBlockQuantized: words, positions)
    assert by["GPFQ 4-bit"]["ops"]["com.microsoft:GatherBlockQuantized"] == 2
    assert any(c["candidate"].startswith("L0.50") for c in cands)          # a student with half the layers
    assert "student L0.67-ffn25-smollm2: skipped (teacher smollm2: " in proc.stdout + proc.stderr
    if "AxFormer + GPFQ 4-bit" in by:             # the AxFormer result without top-k: fused, and a candidate structure
        ag = by["AxFormer + GPFQ 4-bit"]
        assert ag["runtime"] == "onnxruntime" and "com.microsoft:DynamicQuantizeMatMul" in ag["ops"]
        assert ag["size_bytes"] < by["AxFormer + int8 (ONNX Runtime)"]["size_bytes"]
        assert "AxFormer + GPFQ 4-bit" in t["gpfq4_goal"]
        assert any(c["candidate"].startswith("AxFormer+vocab+") for c in cands)
        # students cut from the AxFormer result, distilled from it (a default plan)
        assert any(c["candidate"].startswith("AxFormer-L") for c in cands)
        assert any("distillation from the AxFormer result" in c["steps"] for c in cands)
    for r in res["rows"]:
        lo, hi = r["latency_b1_spread_ms"]
        assert lo <= r["latency_b1_ms"] <= hi


def _row(name, group, acc, lat, size, spread=0.05):
    return {"name": name, "group": group, "runtime": "onnxruntime" if name.startswith("ONNX Runtime") else "pytorch",
            "accuracy": acc, "latency_b1_ms": lat, "latency_b32_ms": lat * 10,
            "size_bytes": size, "latency_b1_spread_ms": [lat * (1 - spread), lat * (1 + spread)],
            "latency_b32_spread_ms": [10 * lat * (1 - spread), 10 * lat * (1 + spread)]}


def test_dominates_needs_all_three():
    a = _row("a", "axlab", 0.84, 1.0, 10)
    assert bench.dominates(a, _row("p", "peer", 0.84, 1.0, 10))
    assert not bench.dominates(a, _row("p", "peer", 0.85, 2.0, 20))     # less accurate
    assert not bench.dominates(a, _row("p", "peer", 0.80, 0.9, 20))     # slower
    assert not bench.dominates(a, _row("p", "peer", 0.80, 2.0, 9))      # larger


def test_within_noise_is_overlap_of_round_spreads():
    a, b = _row("a", "axlab", 0.8, 1.0, 1), _row("b", "peer", 0.8, 1.08, 1)     # [0.95, 1.05] vs [1.03, 1.13]
    assert bench.within_noise(a, b, 1)
    assert bench.speed_ratio(a, b, 1) == {"ratio": pytest.approx(1.08), "within_noise": True,
                                          "overlap_within_noise": True}
    b = _row("b", "peer", 0.8, 1.2, 1)                                           # [1.14, 1.26]: apart
    assert not bench.within_noise(a, b, 1) and not bench.speed_ratio(a, b, 32)["within_noise"]
    assert bench._ratio_text({"ratio": 1.08, "within_noise": True}) == "1.08x (within noise)"
    del a["latency_b1_spread_ms"]
    assert not bench.within_noise(a, b, 1)                                       # no spread: not claimed


def test_speed_ratio_pairs_the_rounds():
    """Rounds time both rows back to back: a ratio is within noise only when the rows swap order in a round,
    even where the two rows' round spreads overlap (drift across rounds hits both alike)."""
    a, b = _row("a", "axlab", 0.8, 2.0, 1), _row("b", "peer", 0.8, 2.3, 1)
    a["latency_b1_rounds_ms"] = [1.8, 2.0, 2.4, 2.1]                        # a slow round hits both
    b["latency_b1_rounds_ms"] = [2.1, 2.3, 2.7, 2.4]
    a["latency_b1_spread_ms"], b["latency_b1_spread_ms"] = [1.8, 2.4], [2.1, 2.7]
    r = bench.speed_ratio(a, b, 1)
    assert r["overlap_within_noise"] and not r["within_noise"]             # faster in every round
    assert r["round_spread"] == [pytest.approx(1.125, abs=1e-3), pytest.approx(1.1667, abs=1e-3)]
    assert bench._ratio_text(r) == "1.15x [1.12-1.17]"
    b["latency_b1_rounds_ms"] = [2.1, 1.9, 2.7, 2.4]                        # slower in round 2
    assert bench.speed_ratio(a, b, 1)["within_noise"]
    b["latency_b1_rounds_ms"] = [2.1, 2.3]                                  # rounds that do not pair: unpaired rule
    assert bench.speed_ratio(a, b, 1)["within_noise"] and "round_spread" not in bench.speed_ratio(a, b, 1)
    a["latency_b1_rounds_ms"] = [2.0] * 44 + [3.5]                           # 45 rounds, one burst of load
    b["latency_b1_rounds_ms"] = [3.0] * 45
    r = bench.speed_ratio(a, b, 1)
    assert r["within_noise"] and r["paired_median"] == pytest.approx(1.5) and r["interval95"] == [1.5, 1.5]
    assert bench._ratio_text(r, True).endswith("(within noise) (median of the paired round ratios 1.50x, "
                                               "95% interval 1.50-1.50x)")


def test_targets_beat_the_fastest_int8_peer():
    rows = [_row("fp32 PyTorch", "peer", 0.835, 6.0, 90), _row("ONNX Runtime dynamic int8", "peer", 0.837, 2.4, 24),
            _row("ONNX Runtime dynamic int8 (per-channel)", "peer", 0.836, 2.0, 24),
            _row("PyTorch dynamic int8", "peer", 0.83, 1.0, 60),                 # fast, but not an ORT int8 peer
            _row("small", "axlab", 0.84, 1.2, 8), _row("fast-but-worse", "axlab", 0.80, 0.5, 5)]
    t = bench.targets(rows)
    assert t["fastest_int8_peer_b1"] == t["fastest_int8_peer_b32"] == "ONNX Runtime dynamic int8 (per-channel)"
    assert t["best_axlab_row"] == "small"                     # dominates the most peers (no best combination here)
    assert t["per_row"]["small"]["speedup_b1_vs_fastest_int8_peer"] == pytest.approx(2.0 / 1.2)
    assert t["per_row"]["small"]["compression_vs_fastest_int8_peer"] == pytest.approx(3.0)
    assert t["per_row"]["small"]["peers_not_dominated"] == ["PyTorch dynamic int8"]
    rows = [r for r in rows if r["name"] != "PyTorch dynamic int8"]
    rows.append(_row("axlab best combination", "axlab", 0.84, 1.3, 9))
    t = bench.targets(rows)
    assert t["best_axlab_row"] == "axlab best combination" and t["dominates_every_peer_b1"]
    assert t["speedup_b1_vs_fastest_int8_peer"] == pytest.approx(2.0 / 1.3) and t["goal_1.5x_latency_b1"]
    assert t["goal_1.5x_latency_b32"] and t["goal_2.5x_size"] and t["all_goals_met"]
    rows[-1]["accuracy"] = 0.834                                           # below fp32: goals not met
    t = bench.targets(rows)
    assert not t["accuracy_at_least_fp32"] and not t["all_goals_met"]
    assert t["peers_not_dominated"] == ["fp32 PyTorch", "ONNX Runtime dynamic int8",
                                        "ONNX Runtime dynamic int8 (per-channel)"]


def test_targets_gpfq4_and_fused_checks():
    rows = [_row("fp32 PyTorch", "peer", 0.835, 6.0, 90), _row("ONNX Runtime fp32", "peer", 0.835, 5.0, 91),
            _row("ONNX Runtime dynamic int8", "peer", 0.836, 2.0, 24),
            _row("GPFQ 4-bit", "axlab", 0.832, 2.05, 9),
            _row("axlab fused fp32 (ONNX Runtime)", "axlab", 0.835, 4.0, 90)]
    rows[-1]["attention_nodes"] = 6
    t = bench.targets(rows)
    g = t["gpfq4_goal"]["GPFQ 4-bit"]
    assert g["size_vs_int8_peer"] == pytest.approx(9 / 24) and not g["at_most_a_third"]
    assert g["within_0.5_points"] and g["no_slower_b1"] and g["b1_within_noise"]        # 2.05 vs 2.0: overlap
    rows[3]["size_bytes"] = 8
    rows[3]["accuracy"] = 0.829
    g = bench.targets(rows)["gpfq4_goal"]["GPFQ 4-bit"]
    assert g["at_most_a_third"] and not g["within_0.5_points"]
    f = t["fused_fp32_vs_unfused"]
    assert f["attention_nodes"] == 6 and f["b1"]["ratio"] == pytest.approx(1.25) and not f["b1"]["within_noise"]


def test_pareto_and_ratios():
    rows = [_row("fp32 PyTorch", "peer", 0.835, 6.0, 90), _row("ONNX Runtime dynamic int8", "peer", 0.837, 2.0, 24),
            _row("small", "axlab", 0.836, 1.2, 12), _row("fast-but-worse", "axlab", 0.80, 0.5, 5)]
    assert bench.pareto_flags(rows, "latency_b1_ms") == [False, True, True, True]      # fp32 is beaten
    rows[2]["latency_b1_ms"] = 2.5                                       # now ORT int8 beats it on both
    assert bench.pareto_flags(rows, "latency_b1_ms") == [False, True, False, True]
    bench.add_ratios(rows)
    assert rows[1]["speedup_b1"] == pytest.approx(3.0) and rows[1]["compression"] == pytest.approx(90 / 24)


def test_config_validates():
    with pytest.raises(ValueError):
        bench.BenchConfig(threads=0)
    with pytest.raises(ValueError):
        bench.BenchConfig(head_fraction=1.5)
    with pytest.raises(ValueError):
        bench.StudentPlan(layers=0)
    with pytest.raises(ValueError):
        bench.BenchConfig(student_steps=-1)
    with pytest.raises(ValueError):
        bench.BenchConfig(selection_margin_se=-1)
    with pytest.raises(ValueError):
        bench.BenchConfig(student_augment=-1)
    assert bench.BenchConfig(students=({"layers": 0.5, "ffn": 0.25},)).students[0].key == "L0.50-ffn25"
    assert bench.StudentPlan(layers=0.83, start="axformer").key == "AxFormer-L0.83"
    with pytest.raises(ValueError, match="start"):
        bench.StudentPlan(start="teacher")
    for bad in ({"steps": 0}, {"augment": -1}):
        with pytest.raises(ValueError, match="steps"):
            bench.StudentPlan(**bad)


def test_a_plan_may_carry_its_own_distillation_recipe(monkeypatch):
    """A plan's steps / copies override the run's (full runs only) and key its cache entry; a plan
    without them keys its entry exactly as before the fields existed."""
    long = bench.StudentPlan(layers=0.83, ffn=0.25, start="axformer", steps=4000, augment=8)
    assert long.key == "AxFormer-L0.83-ffn25-4000steps-aug8"
    assert long.recipe(bench.BenchConfig()) == (4000, 8)
    assert bench.StudentPlan(layers=0.83).recipe(bench.BenchConfig(student_steps=7, student_augment=1)) == (7, 1)
    assert long.recipe(bench.BenchConfig.quick_defaults()) == (10, 2)          # quick stays quick
    assert long.recipe(bench.BenchConfig(student_steps=0)) == (0, 2)           # no distillation stays none
    assert "steps" not in bench.StudentPlan(layers=0.83).cache_fields()
    assert long.cache_fields()["steps"] == 4000 and long.cache_fields()["augment"] == 8
    taught = bench.StudentPlan(layers=0.67, ffn=0.25, teacher="smollm2", soup=3)
    assert taught.key == "L0.67-ffn25-smollm2-soup3" and taught.cache_fields()["teacher"] == "smollm2"
    assert "teacher" not in bench.StudentPlan(layers=0.67).cache_fields()          # older entries stay valid
    with pytest.raises(ValueError):
        bench.StudentPlan(teacher="bert-large")
    parsed = []

    class Stop(Exception):
        pass

    def fake_run(cfg, out, say):
        parsed.append(cfg)
        raise Stop
    monkeypatch.setattr(bench, "run", fake_run)
    with pytest.raises(Stop):
        bench.main(["--student", "layers=0.83,ffn=0.25,start=axformer,steps=4000,augment=8", "--out", "/tmp/x"])
    assert parsed and parsed[0].students == (long,)
    assert isinstance(parsed[0].students[0].steps, int)
    with pytest.raises(Stop):
        bench.main(["--student", "layers=0.67,ffn=0.25,teacher=smollm2,soup=3", "--out", "/tmp/x"])
    assert parsed[-1].students == (taught,)
    with pytest.raises(Stop):
        bench.main(["--no-students", "--out", "/tmp/x"])
    assert parsed[-1].students == ()
    with pytest.raises(SystemExit):
        bench.main(["--no-students", "--student", "layers=0.5", "--out", "/tmp/x"])
    with pytest.raises(ValueError):
        bench.Row("x", "other", "pytorch", predictor=lambda b: b, size_bytes=1)
    assert bench.BenchConfig.quick_defaults().quick


def test_accuracy_delta_carries_its_paired_se():
    """The per-row Markdown shows the accuracy difference with its paired standard error."""
    assert bench._delta_text({"accuracy_delta_vs_fp32_points": -0.5, "accuracy_delta_se_points": 0.412}) == \
        "-0.50 ± 0.41"
    assert bench._delta_text({"accuracy_delta_vs_fp32_points": 0.6}) == "+0.60"
    assert bench._delta_text({}) == "-"


def test_paired_margin():
    base = [1, 1, 0, 0, 1, 0, 1, 1]
    cand = [1, 1, 1, 0, 1, 1, 1, 0]                    # +2 and -1 on the same examples
    pm = bench.paired_margin(cand, base)
    d = [c - b for c, b in zip(cand, base)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    assert pm["delta"] == pytest.approx(0.125) and pm["se"] == pytest.approx(se) and pm["z"] == pytest.approx(mean / se)
    assert bench.paired_margin(base, base) == {"delta": 0.0, "se": 0.0, "z": math.inf}
    assert bench.paired_margin([0, 1], [1, 1])["z"] < 0


def test_selection_optimism_sees_the_winners_curse_and_a_real_winner():
    """Twenty candidates as accurate as the base in expectation (each example, independently: a base
    error turns right with p = 1/4, a right answer wrong with p = 1/16; 50 each way on average):
    the pick on one half looks better, the other half says ~0.
    One candidate truly 10 points better: picked on every split, its margin holds on the other half."""
    import numpy as np
    rng = np.random.default_rng(1)
    n = 1000
    base = (rng.random(n) < 0.8).astype(float)
    alike = []
    for _ in range(20):
        u = rng.random(n)
        alike.append(np.where(base == 0, u < 1 / 4, u >= 1 / 16).astype(float))
    r = bench.selection_optimism(np.stack(alike), base, n_splits=300)
    assert r["candidates"] == 20 and r["splits"] == 300
    assert r["pick_margin_on_half_a_points"] > 1.0 and r["optimism_points"] > 1.0
    assert abs(r["pick_margin_held_out_points"]) < 1.0
    good = base.copy()
    good[np.flatnonzero(base == 0)[:100]] = 1.0                     # +10 points
    r = bench.selection_optimism(np.stack([good, *alike]), base, n_splits=300)
    assert r["pick_margin_held_out_points"] == pytest.approx(10.0, abs=2.0)
    assert r["held_out_margin_at_least_0"] == 1.0 and abs(r["optimism_points"]) < 1.0
    with pytest.raises(ValueError):
        bench.selection_optimism(np.ones((2, 5)), np.ones(6))


def test_students_are_cached_by_everything_that_shapes_them(tmp_path, monkeypatch):
    """A distilled student is stored once and reloaded bit for bit; the key changes with the plan,
    the dropped layers and the distillation options; quick runs never cache."""
    import torch
    from axlab.compress.prune import drop_layers
    from axlab.core.data import load_dataset
    from axlab.core.testing import tiny_model, tiny_tokenizer

    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    base, tok = tiny_model("bert", layers=3), tiny_tokenizer()
    splits = load_dataset("rotten_tomatoes")
    cfg = bench.BenchConfig(student_steps=3, student_augment=1)
    plan = bench.StudentPlan(layers=0.67)
    path = bench._student_cache_path(base, splits, cfg, plan, [1])
    assert path is not None and not path.exists()
    others = [bench._student_cache_path(base, splits, cfg, bench.StudentPlan(layers=0.67, ffn=0.5), [1]),
              bench._student_cache_path(base, splits, cfg, plan, [2]),
              bench._student_cache_path(base, splits, bench.BenchConfig(student_steps=4, student_augment=1), plan, [1]),
              bench._student_cache_path(base, splits, bench.BenchConfig(student_steps=3), plan, [1]),
              bench._student_cache_path(base, splits, cfg, bench.StudentPlan(layers=0.67, start="axformer"), [1]),
              bench._student_cache_path(base, splits, bench.BenchConfig(student_steps=3, student_augment=1,
                                                                        student_quant_aware=True), plan, [1])]
    assert len({path, *others}) == 7
    # a plan from the base keys its entry as before 'start' existed: students distilled then stay valid
    assert bench.StudentPlan(layers=0.67).cache_fields() == {"layers": 0.67, "ffn": 0.0, "heads": 0.0}
    assert bench._student_cache_path(base, splits, bench.BenchConfig.quick_defaults(), plan, [1]) is None
    small = type(splits)(name=splits.name, label_names=splits.label_names, train=splits.train.head(64),
                         validation=splits.validation.head(8), test=splits.test.head(8), seed=splits.seed,
                         file_hash=splits.file_hash, source_file=splits.source_file, info=splits.info)
    student = drop_layers(base, [1])
    first, cached = bench._distilled(student, base, tok, small, cfg, path)
    assert not cached and path.exists()
    again, cached = bench._distilled(student, base, tok, small, cfg, path)
    assert cached
    for (k, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_soup_plan_averages_students_cached_one_by_one(monkeypatch, tmp_path):
    """plan.soup = k: k students (seeds seed .. seed+k-1), each cached as that seed's single student
    (member 0 is the plan's single student), averaged = distill(..., soup=k); the cached step is recorded."""
    import torch
    from axlab.compress.distill import distill
    from axlab.compress.prune import drop_layers
    from axlab.core.data import Splits
    from axlab.core.testing import tiny_model, tiny_split, tiny_tokenizer

    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    base, tok = tiny_model("bert", layers=3), tiny_tokenizer()
    small = Splits(name="t", label_names=["0", "1"], train=tiny_split(32, seed=1), validation=tiny_split(8, seed=2),
                   test=tiny_split(8, seed=3), seed=0, file_hash="x", source_file="x")
    cfg = bench.BenchConfig(student_steps=2, student_augment=1, gpu=False, seed=4)
    plan = bench.StudentPlan(layers=0.67, soup=3)
    assert plan.key == "L0.67-soup3" and "soup" not in bench.StudentPlan(layers=0.67).cache_fields()
    with pytest.raises(ValueError):
        bench.StudentPlan(soup=1)
    assert plan.members(cfg) == 3 and plan.members(bench.BenchConfig.quick_defaults()) == 1   # quick stays quick
    student = drop_layers(base, [1])
    single = bench._student_cache_path(base, small, cfg, bench.StudentPlan(layers=0.67), [1])
    one, _ = bench._distilled(student, base, tok, small, cfg, single)          # the plan's single student, cached
    out, hits = bench._souped(student, base, tok, small, cfg, plan, [1])
    assert hits == 1                                                           # member 0 came from the cache
    ref = distill(student, base, tok, small.train, steps=2, lr=cfg.student_lr, seed=4, augment=1, soup=3,
                  quant_embedding_bits=bench.STUDENT_QAT_EMBEDDING_BITS)
    for (k, a), (_, b) in zip(out.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    assert out.axlab_recipe == ref.axlab_recipe
    again, hits = bench._souped(student, base, tok, small, cfg, plan, [1])
    assert hits == 3
    for (k, a), (_, b) in zip(out.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert not torch.equal(one.classifier.weight, out.classifier.weight)


def test_bench_students_distilled_on_a_gpu_get_their_own_cache_entry(monkeypatch, tmp_path):
    import torch
    from axlab.core.data import load_dataset
    from axlab.core.testing import tiny_model
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    base, splits = tiny_model("bert", layers=3), load_dataset("rotten_tomatoes")
    plan = bench.StudentPlan(layers=0.67)
    cpu = bench._student_cache_path(base, splits, bench.BenchConfig(gpu=False), plan, [1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench._train_device(bench.BenchConfig()) == "cuda"
    assert bench._train_device(bench.BenchConfig(gpu=False)) is None
    assert bench._student_cache_path(base, splits, bench.BenchConfig(gpu=False), plan, [1]) == cpu
    assert bench._student_cache_path(base, splits, bench.BenchConfig(), plan, [1]) not in (cpu, None)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_bench_distils_a_student_on_the_gpu_and_returns_it_on_the_cpu(tokenizer, tmp_path, monkeypatch):
    import torch
    from axlab.compress import prune
    from axlab.core.data import Splits
    from axlab.core.measure import model_device
    from axlab.core.testing import tiny_model, tiny_split
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    base = tiny_model("bert", layers=3)
    small = Splits(name="t", label_names=["0", "1"], train=tiny_split(32, seed=1), validation=tiny_split(8, seed=2),
                   test=tiny_split(8, seed=3), seed=0, file_hash="x", source_file="x")
    student = prune.drop_layers(base, [1])
    out, cached = bench._distilled(student, base, tokenizer, small, bench.BenchConfig(student_steps=3), None)
    assert not cached and model_device(out).type == "cpu"
    assert model_device(student).type == "cpu" and model_device(base).type == "cpu"     # inputs left where they were
    assert not torch.equal(out.classifier.weight, student.classifier.weight)


def test_leads_token_pruning_masks_later_layers_only():
    """bench_leads' token pruning: keeping every token changes nothing, keeping fewer changes the logits
    of long rows, the attention function is axlab's again afterwards, and the kept share is counted."""
    import torch
    from axlab.core.attention import ATTN_NAME, axlab_attention
    from axlab.core.testing import tiny_model, tiny_tokenizer
    from transformers import AttentionInterface
    spec = importlib.util.spec_from_file_location("axlab_bench_leads", ROOT / "bench" / "bench_leads.py")
    leads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leads)
    tok, m = tiny_tokenizer(), tiny_model("bert", layers=3).eval()
    batch = tok(["the plot drags on and on " * 3, "flat ."], padding=True, return_tensors="pt")
    def cls_out():          # the last layer's [CLS] state (a random tiny model's logits barely move)
        return m(**batch, output_hidden_states=True).hidden_states[-1][:, 0]

    with torch.no_grad():
        dense = cls_out()
        kept: list = []
        with leads.token_pruning(0, 1.0, kept):
            same = cls_out()
        with leads.token_pruning(0, 0.3, kept):
            pruned = cls_out()
        assert AttentionInterface._global_mapping[ATTN_NAME] is axlab_attention
        again = cls_out()
    real = int(batch["attention_mask"].sum())
    assert torch.allclose(dense, same, atol=1e-6) and torch.allclose(dense, again, atol=1e-6)
    assert (dense[0] - pruned[0]).abs().max() > 1e-2
    assert kept[0] == (real, real) and kept[1][0] < real


def _teacher_table(folder, splits, tok, teacher, name="big"):
    """bench/teacher.py's files for ``teacher`` (a model reading the student's tokenizer) over ``splits``."""
    import numpy as np
    from axlab.core.measure import predict_logits
    T = bench._teacher_module()
    blocks = T.transfer_texts(splits)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **{b: predict_logits(teacher, tok, texts, 64, max_length=64).numpy()
                                         for b, texts in blocks.items()})
    card = {"label_names": list(splits.label_names), "blocks": list(blocks), "texts_hash": T.texts_hash(blocks),
            "accuracy": {"validation": 0.5, "test": 0.5}}
    (folder / f"{name}.json").write_text(json.dumps(card))
    return T


def test_a_larger_teacher_teaches_through_its_cached_logits(tmp_path, monkeypatch):
    """A student distilled from the teacher's cached logits (bench/teacher.py's table, looked up by the
    student's token ids) matches one distilled from the teacher itself, and not one from the base; a plan
    with teacher=... uses the table, keys its cache entry by the logits, and a stale or missing table is refused."""
    import torch
    from axlab.compress.distill import distill
    from axlab.compress.prune import drop_layers
    from axlab.core.data import Splits
    from axlab.core.testing import tiny_model, tiny_split, tiny_tokenizer

    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    base, big, tok = tiny_model("bert", layers=3), tiny_model("bert", layers=3, seed=7), tiny_tokenizer()
    with torch.no_grad():
        big.classifier.weight *= 20                       # a teacher with opinions of its own
    small = Splits(name="t", label_names=["0", "1"], train=tiny_split(24, seed=1), validation=tiny_split(8, seed=2),
                   test=tiny_split(8, seed=3), seed=0, file_hash="x", source_file="x")
    base.config.id2label = big.config.id2label = {0: "0", 1: "1"}
    base.config.label2id = big.config.label2id = {"0": 0, "1": 1}
    T = _teacher_table(tmp_path / "teachers", small, tok, big)
    table, card = T.load_table("big", small, tok, base.config, folder=tmp_path / "teachers")
    student = drop_layers(base, [1])
    kw = dict(steps=3, lr=1e-3, seed=2, augment=2, batch_size=8)
    from_table = distill(student, table, tok, small.train, **kw)
    from_big = distill(student, big, tok, small.train, **kw)
    from_base = distill(student, base, tok, small.train, **kw)
    for (k, a), (_, b) in zip(from_table.state_dict().items(), from_big.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=k)
    assert (from_table.classifier.weight - from_base.classifier.weight).abs().max() > 1e-3
    with pytest.raises(KeyError, match="does not hold"):      # a 9th perturbed copy is not in the table
        distill(student, table, tok, small.train, **{**kw, "augment": 9})

    # the bench's plan: same student as distilling from the table, cached under a key of the logits
    monkeypatch.setattr(T, "TEACHERS", tmp_path / "teachers")
    monkeypatch.setitem(bench.STUDENT_TEACHERS, "big", "a bigger model")
    plan = bench.StudentPlan(layers=0.67, teacher="big")
    cfg = bench.BenchConfig(student_steps=3, student_augment=2, gpu=False, seed=2)
    path = bench._student_cache_path(base, small, cfg, plan, [1])
    assert path != bench._student_cache_path(base, small, cfg, bench.StudentPlan(layers=0.67), [1])
    got, cached = bench._distilled(student, base, tok, small, cfg, path, plan)
    ref = distill(student, table, tok, small.train, steps=3, lr=cfg.student_lr, seed=2, augment=2,
                  quant_embedding_bits=bench.STUDENT_QAT_EMBEDDING_BITS)
    assert not cached and path.exists()
    for (k, a), (_, b) in zip(got.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    assert got.axlab_recipe[-1]["params"]["teacher"] == "bench/teachers/big.npz"
    _teacher_table(tmp_path / "teachers", small, tok, base)                        # the teacher remade
    assert bench._student_cache_path(base, small, cfg, plan, [1]) != path

    # refused: other texts, other labels, no table
    other = Splits(name="t", label_names=["0", "1"], train=tiny_split(24, seed=9), validation=small.validation,
                   test=small.test, seed=0, file_hash="y", source_file="x")
    with pytest.raises(ValueError, match="other training texts"):
        T.load_table("big", other, tok, base.config)
    named = copy.deepcopy(base.config)
    named.id2label = {0: "neg", 1: "pos"}
    with pytest.raises(ValueError, match="predicts"):
        T.load_table("big", small, tok, named)
    with pytest.raises(FileNotFoundError, match="bench/teacher.py"):
        T.load_table("none", small, tok, base.config)
    said = []
    built = bench.build_students(base, tok, other, bench.BenchConfig(student_steps=1, students=(plan,), gpu=False),
                                 said.append)
    assert built == [] and "skipped (teacher big" in said[-1]


def test_onnx_files_timed_side_by_side_from_tokens_alone(tmp_path):
    """bench_onnx_files.py times ONNX files from pre-tokenized texts (no dataset, no tokenizer there):
    every file in every round, ratios against the first file, bad --file refused before anything runs."""
    import numpy as np
    from axlab.core.testing import tiny_model, tiny_tokenizer
    from axlab.deploy.fused_onnx import export_fused_onnx
    spec = importlib.util.spec_from_file_location("axlab_bench_onnx_files", ROOT / "bench" / "bench_onnx_files.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tok = tiny_tokenizer()
    small, large = tiny_model("bert", layers=1), tiny_model("bert", layers=4, hidden=128, intermediate=512)
    for name, m in (("small", small), ("large", large)):
        export_fused_onnx(m, tok, tmp_path / f"{name}.onnx")
    enc = tok(["a short review", "a somewhat longer review of a film that went on", "ok"] * 20,
              padding="max_length", max_length=32, return_tensors="np")
    np.savez(tmp_path / "tok.npz", input_ids=enc["input_ids"].astype(np.int32),
             attention_mask=enc["attention_mask"].astype(np.int8))
    res = mod.time_files({"large": tmp_path / "large.onnx", "small": tmp_path / "small.onnx"}, tmp_path / "tok.npz",
                         rounds_b1=6, rounds_b32=2, runs={1: 3, 32: 1}, threads=1)
    assert [len(res["rounds_ms"][bs]["small"]) for bs in (1, 32)] == [6, 2]
    assert set(res["vs_base"][1]) == {"small"}                                # the base is not compared with itself
    r1 = res["vs_base"][1]["small"]
    assert r1["ratio_of_medians"] == pytest.approx(res["latency_ms"][1]["large"] / res["latency_ms"][1]["small"])
    assert r1["interval95"] is not None and res["vs_base"][32]["small"]["interval95"] is None   # 6 rounds vs 2
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_onnx_files.py"), "time", "--tokens",
                          str(tmp_path / "tok.npz"), "--file", "a=" + str(tmp_path / "small.onnx"), "--file",
                          "b=" + str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "NAME=PATH with an existing .onnx file" in bad.stderr
