import copy

import numpy as np
import pytest
import torch
from axlab.core.measure import evaluate, latency, measure, predict_logits, size_report
from axlab.core.surgery import remove_heads_


def test_predict_logits_keeps_order(tiny, tokenizer, split):
    out = predict_logits(tiny, tokenizer, split.texts, batch_size=5, progress=False)
    for i in (0, 7, len(split) - 1):
        with torch.no_grad():
            one = tiny(**tokenizer([split.texts[i]], return_tensors="pt")).logits[0]
        torch.testing.assert_close(out[i], one, atol=1e-5, rtol=0)


def test_evaluate_matches_manual(tiny, tokenizer, split):
    from sklearn.metrics import f1_score
    ev = evaluate(tiny, tokenizer, split, progress=False)
    pred = predict_logits(tiny, tokenizer, split.texts, progress=False).argmax(-1).numpy()
    y = np.array(split.labels)
    assert ev["accuracy"] == pytest.approx(float((pred == y).mean()))
    assert ev["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert ev["n"] == len(split)


def test_size_report_matches_saved_file(tiny, tmp_path):
    rep = size_report(tiny)
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    on_disk = (tmp_path / "model.safetensors").stat().st_size
    assert abs(rep["size_bytes"] - on_disk) / on_disk < 0.01
    assert rep["params"] == sum(p.numel() for p in tiny.parameters())


def test_size_shrinks_when_pruned_but_not_when_zeroed(tiny):
    base = size_report(tiny)
    pruned = copy.deepcopy(tiny)
    remove_heads_(pruned, 0, [0, 1])
    assert size_report(pruned)["size_bytes"] < base["size_bytes"]
    zeroed = copy.deepcopy(tiny)
    with torch.no_grad():
        for p in zeroed.parameters():
            p[p.abs() < p.abs().median()] = 0
    rep = size_report(zeroed)
    assert rep["size_bytes"] == base["size_bytes"]        # a dense export still writes zeros
    assert rep["nonzero"] < 0.6 * base["nonzero"]


def test_latency_and_measure_record(tiny, tokenizer, split):
    lat = latency(tiny, tokenizer, split.texts, batch_size=4, n_runs=3, warmup=1)
    assert lat["median_ms"] > 0 and lat["p90_ms"] >= lat["median_ms"] and lat["runs"] == 3
    m = measure(tiny, tokenizer, split, latency_runs=(3, 2), progress=False).to_dict()
    for key in ("accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "size_bytes", "params", "nonzero"):
        assert m[key] is not None
    assert m["split"] == "test"


def test_fidelity_and_scores():
    from axlab.core.measure import fidelity, scores
    ref = torch.tensor([[2.0, -1.0], [0.5, 1.5], [3.0, 0.0], [-1.0, 1.0]])
    same = fidelity(ref, ref)
    assert same["agreement"] == 1.0 and abs(same["kl"]) < 1e-7
    cooler = fidelity(ref / 2, ref)                 # same predictions, softer distribution
    assert cooler["agreement"] == 1.0 and cooler["kl"] > 0.01
    flipped = fidelity(ref.flip(-1), ref)
    assert flipped["agreement"] == 0.0 and flipped["kl"] > cooler["kl"]
    s = scores(ref, [0, 1, 1, 1])
    assert s["accuracy"] == 0.75 and s["n"] == 4
    assert abs(s["loss"] - float(torch.nn.functional.cross_entropy(ref, torch.tensor([0, 1, 1, 1])))) < 1e-6


def test_compare_latency_interleaves_rounds_and_flags_noise(tokenizer, split, one_thread):
    import time as _time

    from axlab.core.measure import compare_latency
    from axlab.core.testing import tiny_model
    calls = []

    def slow(batch):
        calls.append("slow")
        _time.sleep(0.004)
        return torch.zeros(len(batch["input_ids"]), 2)

    def fast(batch):
        calls.append("fast")
        return torch.zeros(len(batch["input_ids"]), 2)

    res = compare_latency({"slow": slow, "fast": fast}, tokenizer, split.texts, rounds=4, runs_per_round=3, warmup=1)
    body = calls[2:]                                            # after one warm-up call each
    # rounds alternate the order: slow first, then fast first, ...
    assert body[:3] == ["slow"] * 3 and body[3:6] == ["fast"] * 3 and body[6:9] == ["fast"] * 3
    r = res["ratios"]["fast"]
    assert r["speedup"] > 1 and r["speedup_range"][0] <= r["speedup"] * 1.5 and r["within_noise"] is False
    assert len(res["models"]["slow"]["round_medians_ms"]) == 4
    same = tiny_model("bert")
    res = compare_latency({"a": same, "b": same}, tokenizer, split.texts, rounds=3, runs_per_round=2)
    lo, hi = res["ratios"]["b"]["speedup_range"]
    assert lo <= res["ratios"]["b"]["speedup"] <= hi or res["ratios"]["b"]["within_noise"]


def test_within_noise_pairs_the_rounds(tokenizer, split):
    """A slow round slows both models alike: their round ranges overlap, yet one is faster in every round."""
    import time as _time

    from axlab.core.measure import compare_latency
    runs = 2
    count = {"a": 0, "b": 0}

    def timed(name, ms):
        def predict(batch):
            rnd = max(0, count[name] - 1) // runs          # after one warm-up call
            count[name] += 1
            _time.sleep(ms * (3 if rnd % 2 else 1) / 1000)     # every other round three times slower
            return torch.zeros(len(batch["input_ids"]), 2)
        return predict

    res = compare_latency({"a": timed("a", 6), "b": timed("b", 3)}, tokenizer, split.texts, rounds=4,
                          runs_per_round=runs, warmup=1)
    r = res["ratios"]["b"]
    assert r["overlap_within_noise"] is True and r["within_noise"] is False and r["speedup_range"][0] > 1


def test_measure_against_a_base_records_the_interleaved_ratio(tiny, tokenizer, split, one_thread):
    m = measure(tiny, tokenizer, split, compare_to=tiny, latency_runs=(6, 3), latency_rounds=3)
    vs = m.latency_vs_base["b1"]
    assert vs["rounds"] == 3 and vs["ms"] == m.latency_b1_ms and m.latency_b1_spread_ms[0] <= m.latency_b1_ms
    assert m.confusion is not None and sum(map(sum, m.confusion)) == len(split)


def test_paired_speedup_is_judged_round_by_round():
    """A speed-up is within noise when the rounds disagree on which is faster, whatever the medians say."""
    from axlab.core.measure import paired_speedup
    steady = paired_speedup([10.0, 12.0, 11.0], [5.0, 6.0, 5.5])          # 2x in every round
    assert steady["speedups"] == [2.0, 2.0, 2.0] and steady["range"] == [2.0, 2.0] and not steady["within_noise"]
    swapped = paired_speedup([10.0, 10.0], [8.0, 11.0])                    # faster in one round, slower in the other
    assert swapped["within_noise"] is True and swapped["range"] == [10.0 / 11.0, 1.25]
    assert paired_speedup([10.0], [5.0])["within_noise"] is None           # one round says nothing about noise
    assert paired_speedup([10.0, 10.0], [0.0, 5.0])["speedups"] == [2.0]    # a zero time is left out


def test_paired_speedup_interval_narrows_where_the_range_widens():
    """One slow round among many makes the range include 1x; the bootstrap interval of the median
    per-round ratio stays near the typical round's ratio, and is wide when the rounds scatter."""
    from axlab.core.measure import paired_speedup
    base = [3.0] * 44 + [3.0]
    other = [2.0] * 44 + [3.5]                                               # 1.5x, and one round slower
    r = paired_speedup(base, other)
    assert r["within_noise"] and r["median"] == pytest.approx(1.5)
    assert r["interval"] == [pytest.approx(1.5), pytest.approx(1.5)]
    rng = np.random.default_rng(1)
    scattered = paired_speedup(list(3.0 * rng.uniform(0.6, 1.4, 45)), [2.0] * 45)
    lo, hi = scattered["interval"]
    assert lo < scattered["median"] < hi and hi - lo > 0.1                  # the median is not known to 0.1x
    assert paired_speedup([3.0] * 4, [2.0] * 4)["interval"] is None         # too few rounds for an interval
    assert paired_speedup([3.0] * 4, [2.0] * 4, min_rounds_for_interval=4)["interval"] is not None
