"""`axlab export` and `axlab report` produce the three outputs and refuse to overwrite."""
import json

import torch
from axlab.cli import main
from axlab.core.loading import load_variant
from axlab.core.measure import predict_logits
from axlab.core.testing import save_tiny
from axlab.deploy.report import external_references
from axlab.store.variants import Variant, VariantStore


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
    assert main(["report", "--out", str(rep), "--workspace", "t", "--json"]) == 0
    assert {p.name for p in rep.iterdir()} == {"report.html", "report.json", "report.md"}
    assert main(["report", "--out", str(rep), "--workspace", "t"]) == 2
    assert main(["report", "--out", str(tmp_path / "none"), "--workspace", "empty"]) == 2
