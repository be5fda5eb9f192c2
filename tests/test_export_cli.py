"""`axlab export` and `axlab report` produce the three outputs and refuse to overwrite."""
import json

import torch
from axlab.cli import main
from axlab.core.loading import load_variant
from axlab.core.measure import predict_logits
from axlab.core.testing import save_tiny
from axlab.deploy.report import external_references
from axlab.deploy.fused_onnx import attention_node_count
from axlab.store.variants import Variant, VariantStore


def _ops(path):
    import onnx

    from axlab.deploy.fused_onnx import op_histogram
    return op_histogram(onnx.load(str(path)))


def test_cli_export_variant_and_report(tmp_path, monkeypatch, capsys, tokenizer):
    monkeypatch.setenv("AXLAB_DATA", str(tmp_path / "data"))
    base = save_tiny(tmp_path / "tiny", "bert")
    store = VariantStore()
    recipe = [{"op": "prune_heads", "params": {"heads": {"0": [1, 2], "1": [0, 1, 2, 3]}}},
              {"op": "quantize_rtn", "params": {"bits": 4}}]
    v = store.add(Variant(name="pruned-q4", base=str(base), dataset="rotten_tomatoes", recipe=recipe, workspace="t"))
    store.add(Variant(name="base", base=str(base), dataset="rotten_tomatoes", recipe=[], workspace="t",
                      measurements={"accuracy": 0.5, "latency_b1_ms": 2.0, "size_bytes": 8_000_000}))
    out = tmp_path / "out"
    args = ["export", "--variant", v.id, "--out", str(out), "--onnx", "--limit", "32", "--workspace", "t",
            "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx"]["parity_max_abs_diff"] <= 1e-4
    # the default ONNX file is the fused graph: one fused attention node per layer with heads (layer 1 has none),
    # the 4-bit layers keep the variant's own codes (stored at 4 bits, run by the int8 kernel)
    assert printed["onnx_graph"] == "fused" and "onnx_fallback_reason" not in printed
    ops = _ops(out / "onnx" / "model.onnx")
    assert attention_node_count(ops) == 1 and ops["com.microsoft:QAttention"] == 1      # int8-kernel q/k/v
    assert printed["onnx"]["fused_attention_nodes"] == 1
    assert ops["com.microsoft:DynamicQuantizeMatMul"] == 5 and ops["MatMul"] == 2   # + the fp32 pooler, classifier
    assert "com.microsoft:MatMulNBits" not in ops
    # measured next to the PyTorch variant: accuracy, interleaved latency with spread, size
    rows = {r["runtime"]: r for r in printed["comparison"]}
    assert set(rows) == {"pytorch", "onnxruntime"} and rows["onnxruntime"]["graph"] == "fused"
    for r in rows.values():
        assert r["accuracy"] is not None and r["size_bytes"] > 0
        lo, hi = r["latency_b1_spread_ms"]
        assert lo <= r["latency_b1_ms"] <= hi
    assert rows["onnxruntime"]["speedup_b1"] > 0 and isinstance(rows["onnxruntime"]["within_noise_b1"], bool)
    assert rows["onnxruntime"]["accuracy"] == rows["pytorch"]["accuracy"]        # same codes, parity 1e-4
    expected = {"model.safetensors", "onnx/model.onnx", "report/report.html", "report/report.json", "report/report.md"}
    assert expected <= set(printed["files"])
    # the folder is the variant: same logits as replaying the recipe
    from axlab.compress import apply_recipe
    from axlab.core.loading import load_model
    want = apply_recipe(load_model(str(base)).model, recipe)
    texts = ["a fun film", "the plot was boring and not good at all ."]
    torch.testing.assert_close(predict_logits(load_variant(out).model, tokenizer, texts),
                               predict_logits(want, tokenizer, texts), atol=1e-6, rtol=0)
    assert external_references((out / "report" / "report.html").read_text()) == []
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(x["name"] for x in report["variants"]) == ["base", "pruned-q4"]
    # the ONNX measurements joined the stored variant
    assert store.get(v.id).measurements["onnx"]["size_bytes"] == printed["onnx"]["size_bytes"]
    # overwrite refused (exit 2 with a hint), nothing changed
    stamp = (out / "axlab_variant.json").read_text()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "axlab_variant.json").read_text() == stamp

    rep = tmp_path / "rep"
    # --lowbit-kernel nbits: the same codes on MatMulNBits, the PyTorch variant's numbers
    out_nb = tmp_path / "out-nbits"
    assert main(["export", "--variant", v.id, "--out", str(out_nb), "--onnx", "--no-measure", "--no-report",
                 "--lowbit-kernel", "nbits", "--workspace", "t", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ops = _ops(out_nb / "onnx" / "model.onnx")
    assert ops["com.microsoft:MatMulNBits"] == 6 and "com.microsoft:DynamicQuantizeMatMul" not in ops
    assert printed["onnx"]["parity_max_abs_diff"] <= 1e-4

    rep = tmp_path / "rep"
    assert main(["report", "--out", str(rep), "--workspace", "t", "--json"]) == 0
    assert {p.name for p in rep.iterdir()} == {"report.html", "report.json", "report.md"}
    assert main(["report", "--out", str(rep), "--workspace", "t"]) == 2
    assert main(["report", "--out", str(tmp_path / "none"), "--workspace", "empty"]) == 2


def test_cli_export_falls_back_to_the_plain_graph_for_top_k_and_int8_is_fused(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("AXLAB_DATA", str(tmp_path / "data"))
    base = save_tiny(tmp_path / "tiny", "bert")
    store = VariantStore()
    topk = store.add(Variant(name="topk", base=str(base), dataset="rotten_tomatoes", workspace="t",
                             recipe=[{"op": "hard_attention", "params": {"topk": {"0": 2}}}]))
    out = tmp_path / "topk"
    with caplog.at_level("WARNING"):
        assert main(["export", "--variant", topk.id, "--out", str(out), "--onnx", "--limit", "16", "--workspace", "t",
                     "--no-report", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx_graph"] == "plain" and "top-k hard attention in layer 0" in printed["onnx_fallback_reason"]
    assert "top-k hard attention" in caplog.text
    assert printed["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert not any(k.startswith("com.microsoft:") for k in _ops(out / "onnx" / "model.onnx"))
    # the base model with --int8: both files fused; the int8 one runs DynamicQuantizeMatMul
    out8 = tmp_path / "int8"
    assert main(["export", str(base), "--out", str(out8), "--onnx", "--int8", "--limit", "16", "--workspace", "t",
                 "--no-report", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx_graph"] == "fused" and printed["onnx_int8"]["graph"] == "fused"
    assert _ops(out8 / "onnx" / "model.onnx")["com.microsoft:Attention"] == 2
    ops8 = _ops(out8 / "onnx" / "model_int8.onnx")
    assert ops8["com.microsoft:QAttention"] == 2 and ops8["com.microsoft:DynamicQuantizeMatMul"] == 8
    assert {r["runtime"] for r in printed["comparison"]} == {"pytorch", "onnxruntime", "onnxruntime-int8"}
    # --onnx-graph plain asks for the dynamo graph
    outp = tmp_path / "plain"
    assert main(["export", str(base), "--out", str(outp), "--onnx", "--onnx-graph", "plain", "--no-measure",
                 "--no-report", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx_graph"] == "plain" and "onnx_fallback_reason" not in printed
    assert not any(k.startswith("com.microsoft:") for k in _ops(outp / "onnx" / "model.onnx"))
