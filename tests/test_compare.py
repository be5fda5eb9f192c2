"""The comparison table (ratios to the base row), the Pareto front and the trade-off figures."""
import numpy as np
import pandas as pd
import pytest
from axlab.deploy.compare import pareto_front, tradeoff_figure, variants_table
from axlab.store.variants import Variant


def synthetic_variants(seed=0):
    rng = np.random.default_rng(seed)

    def meas():
        return {"accuracy": float(rng.uniform(0.7, 0.9)), "macro_f1": float(rng.uniform(0.7, 0.9)),
                "latency_b1_ms": float(rng.uniform(1, 10)), "latency_b32_ms": float(rng.uniform(20, 90)),
                "size_bytes": int(rng.integers(10_000_000, 90_000_000)), "params": int(rng.integers(1e6, 2e7)),
                "n": 100}

    base = Variant(name="base", base="default", dataset="rt", recipe=[], measurements=meas())
    pruned = Variant(name="pruned", base="default", dataset="rt", recipe=[{"op": "prune_heads", "params": {}}],
                     measurements={**meas(), "onnx": {"size_bytes": 5_000_000, "latency_b1_ms": 0.5},
                                   "onnx_int8": {"size_bytes": 1_000_000, "latency_b1_ms": 0.3, "accuracy": 0.5}})
    quant = {"name": "quant", "recipe": [{"op": "quantize_int8", "params": {}}], "measurements": meas()}
    return [pruned, base, quant]


def test_table_rows_and_ratios_to_base():
    vs = synthetic_variants()
    df = variants_table(vs)
    assert list(df.name) == ["pruned", "pruned [onnxruntime]", "pruned [onnxruntime-int8]", "base", "quant"]
    b = vs[1].measurements
    assert df.is_base.tolist() == [False, False, False, True, False]
    for _, row in df.iterrows():
        src = {"pruned": vs[0].measurements, "base": b, "quant": vs[2]["measurements"]}[row.variant]
        m = src if row.runtime == "pytorch" else src["onnx" if row.runtime == "onnxruntime" else "onnx_int8"]
        assert row.speedup_b1 == pytest.approx(b["latency_b1_ms"] / m["latency_b1_ms"])
        assert row.compression == pytest.approx(b["size_bytes"] / m["size_bytes"])
        acc = m.get("accuracy", src["accuracy"] if row.runtime == "onnxruntime" else np.nan)
        assert row.accuracy_delta == pytest.approx(acc - b["accuracy"], nan_ok=True)
    # fp32 ONNX inherits the PyTorch accuracy (parity-checked); int8 keeps its own
    assert df.accuracy[1] == vs[0].measurements["accuracy"] and df.accuracy[2] == 0.5
    assert np.isnan(df.latency_b32_ms[1])


def test_explicit_base_and_no_base():
    vs = synthetic_variants()
    df = variants_table(vs, base="quant")
    assert df.loc[df.is_base, "variant"].tolist() == ["quant"]
    assert df.loc[df.variant == "quant", "speedup_b1"].iloc[0] == pytest.approx(1.0)
    no_base = variants_table([vs[0]])
    assert not no_base.is_base.any() and no_base.speedup_b1.isna().all()


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"latency_b1_ms": rng.integers(1, 20, 60).astype(float),
                       "accuracy": rng.integers(0, 15, 60) / 20})
    df.loc[3, "accuracy"] = np.nan
    front = pareto_front(df, "latency_b1_ms", "accuracy")
    for i, r in df.iterrows():
        if np.isnan(r.accuracy):
            assert not front[i]
            continue
        others = df.drop(index=i).dropna()
        dominated = ((others.latency_b1_ms <= r.latency_b1_ms) & (others.accuracy >= r.accuracy)
                     & ((others.latency_b1_ms < r.latency_b1_ms) | (others.accuracy > r.accuracy))).any()
        assert front[i] == (not dominated)
    assert front.any()


def test_tradeoff_figure_has_front_and_base():
    df = variants_table(synthetic_variants())
    fig = tradeoff_figure(df, x="size_mb")
    names = [t.name for t in fig.data]
    assert "Pareto front" in names and "pytorch" in names and "onnxruntime-int8" in names
    front_trace = fig.data[names.index("Pareto front")]
    expected = df[pareto_front(df, "size_mb", "accuracy")].sort_values("size_mb")
    assert list(front_trace.x) == pytest.approx(expected.size_mb.tolist())
    torch_trace = fig.data[names.index("pytorch")]
    assert "star" in list(torch_trace.marker.symbol)
    assert tradeoff_figure(variants_table([]), "latency_b1_ms").data == ()
