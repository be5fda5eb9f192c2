"""ONNX export: parity with PyTorch on varied lengths (checked independently of the export's own check)."""
import shutil

import numpy as np
import pytest
import torch
from axlab.compress import prune, quantize
from axlab.core.attention import set_topk
from axlab.core.errors import ExportError
from axlab.core.measure import evaluate, tokenize
from axlab.core.testing import tiny_model
from axlab.deploy.onnx_export import export_onnx, onnx_predictor

TOL = 1e-4
WORDS = "good bad film plot actor boring fun the a was very not really story scene .".split()


def random_batches(tokenizer, seed=0, n=6):
    """Batches with random sizes and lengths (incl. shorter than the top-k and padded mixes)."""
    rng = np.random.default_rng(seed)
    words = WORDS
    out = [tokenize(tokenizer, [" ".join(rng.choice(words, int(rng.integers(0, 2))))])]   # 2-3 tokens
    for _ in range(n):
        b = int(rng.integers(1, 5))
        texts = [" ".join(rng.choice(words, int(rng.integers(0, 90)))) for _ in range(b)]
        out.append(tokenize(tokenizer, texts))
    return out


def max_diff(model, predictor, batches):
    worst = 0.0
    for b in batches:
        with torch.no_grad():
            ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        worst = max(worst, float((predictor(b) - ref).abs().max()))
    return worst


def hard_pruned(arch):
    """Uneven heads, a layer with no heads, a narrower FFN, top-k 4 hard attention in layer 1."""
    m = tiny_model(arch, layers=3)
    m = prune.prune_heads(m, {0: [1, 2], 2: [0, 1, 2, 3]})
    m = prune.prune_ffn(m, {1: list(range(0, 128, 3))})
    set_topk(m, {1: 4})
    return m


@pytest.fixture(scope="module")
def bert_export(tokenizer, tmp_path_factory):
    model = hard_pruned("bert")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return model, export_onnx(model, tokenizer, path, int8=True)


def test_pruned_hard_attention_parity_and_int8(bert_export, tokenizer):
    model, res = bert_export
    assert res.path.exists() and res.size_bytes == res.path.stat().st_size
    assert res.parity_max_abs_diff <= TOL and len(res.parity) >= 5
    batches = random_batches(tokenizer)
    assert min(b["input_ids"].shape[1] for b in batches) < 4 < max(b["input_ids"].shape[1] for b in batches)
    # a fresh session on the file, fresh inputs: the graph itself has dynamic batch/seq axes
    assert max_diff(model, onnx_predictor(res.path), batches) <= TOL
    # int8: a smaller file whose predictions mostly agree; it is not held to fp32 parity
    assert res.int8_path.exists() and res.int8_size_bytes < 0.5 * res.size_bytes
    b = batches[0]
    assert res.int8_predictor(b).shape == res.predictor(b).shape
    assert res.int8_max_abs_diff > 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_leaves_emptied_ffn_in_fp32(tokenizer, tmp_path, per_channel):
    """An FFN block removed entirely leaves 0-sized MatMuls; ONNX Runtime's quantizer must not
    touch them (per tensor it produced garbage, per channel it crashed)."""
    from axlab.deploy.onnx_export import empty_weight_nodes
    model = prune.prune_ffn(tiny_model("bert", layers=3), {2: list(range(128))})
    res = export_onnx(model, tokenizer, tmp_path / "m.onnx", int8=True, int8_per_channel=per_channel)
    assert len(empty_weight_nodes(res.path)) == 2                       # up and down projection of layer 2
    dense = export_onnx(tiny_model("bert", layers=3), tokenizer, tmp_path / "d.onnx", int8=True,
                        int8_per_channel=per_channel)
    assert empty_weight_nodes(dense.path) == []
    batches = random_batches(tokenizer, seed=3)
    # int8 error on the pruned model is of the same order as on the dense one, not blown up
    assert max_diff(model, res.int8_predictor, batches) < 0.05
    assert res.int8_size_bytes < 0.5 * res.size_bytes


@pytest.mark.parametrize("arch", ["distilbert"])
def test_other_arch_with_int8_linear_layers(arch, tokenizer, tmp_path):
    # DistilBERT keeps its output projection inside the attention module (other EmptyAttention path);
    # int8_dynamic runs int8 kernels in PyTorch and is exported with its int8 weights dequantized.
    # plus a pruned vocabulary (remapped ids) and a dropped layer
    model, _ = prune.prune_vocab(hard_pruned(arch), tokenizer, [" ".join(WORDS[:10])])
    model = quantize.int8_dynamic(prune.drop_layers(model, [0]))
    model.train()
    res = export_onnx(model, tokenizer, tmp_path / "m.onnx")
    assert all(m.training for m in model.modules())      # the exported model is left as it was
    model.eval()
    assert res.parity_max_abs_diff <= TOL
    assert res.variant_max_abs_diff < 0.05       # vs the activation-quantizing int8 kernels
    split_like = random_batches(tokenizer, seed=1, n=3)
    logits = torch.cat([res.predictor(b) for b in split_like])
    assert torch.isfinite(logits).all()


def test_parity_failure_raises_and_leaves_nothing(bert_export, tokenizer, tmp_path, monkeypatch):
    import axlab.deploy.onnx_export as ox
    _, good = bert_export
    other = hard_pruned("bert")          # same shapes, but we hand the exporter another model's graph
    with torch.no_grad():
        other.classifier.bias += 1.0
    monkeypatch.setattr(ox, "_torch_export", lambda model, example, path: shutil.copy(good.path, path))
    target = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(other, tokenizer, target)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_refused(tokenizer, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(tiny_model("bert"), tokenizer, target)
    assert target.read_bytes() == b"old"


def test_default_model_onnx_parity_and_int8_accuracy(default_bundle, default_splits, tmp_path):
    b = default_bundle
    res = export_onnx(b.model, b.tokenizer, tmp_path / "default.onnx", int8=True)
    assert res.parity_max_abs_diff <= TOL
    texts = default_splits.test.texts
    lengths = np.argsort([len(t) for t in texts])
    picks = [[texts[i] for i in lengths[:3]], [texts[i] for i in lengths[-2:]], texts[:16]]  # short, long, mixed
    assert max_diff(b.model, res.predictor, [tokenize(b.tokenizer, p) for p in picks]) <= TOL
    part = default_splits.test.head(300)
    fp32 = evaluate(b.model, b.tokenizer, part)["accuracy"]
    assert evaluate(res.int8_predictor, b.tokenizer, part)["accuracy"] >= fp32 - 0.03
    assert res.int8_size_bytes < 0.4 * res.size_bytes
