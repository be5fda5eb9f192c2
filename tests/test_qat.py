"""Quantization-aware training: inside fake_quantized a model computes what its int8 ONNX file computes."""
import copy

import numpy as np
import pytest
import torch
from axlab.compress import apply_step, prune
from axlab.compress import quantize as Q
from axlab.compress.distill import DistillConfig, distill
from axlab.compress.qat import fake_quantized, int8_weight, row_codes_weight, uint8_activation
from axlab.core.data import Splits
from axlab.core.recipe import RecipeContext
from axlab.core.qmodules import Int8Linear, QuantEmbedding
from axlab.core.testing import tiny_model, tiny_split
from axlab.deploy.fused_onnx import FusedConfig, export_fused_onnx, fused_support
from conftest import logits, skip_if_int8_saturates

# the layout fake_quantized emulates: every activation rounded over all (B, S) positions
PADDED = FusedConfig().padded()


def _skip_if_saturating():
    skip_if_int8_saturates("the exact rounding fake_quantized emulates is checked")

pytestmark = pytest.mark.usefixtures("one_thread")


def _spread(model):
    with torch.no_grad():                       # a random tiny model's logits are all alike; spread them
        model.classifier.weight *= 30 if hasattr(model.classifier, "weight") else 1
    return model


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantized_predicts_what_the_int8_onnx_file_predicts(arch, tokenizer, batch, tmp_path, bits):
    """The backbone: PyTorch inside fake_quantized == the fused int8 graph of quantize_rest (ONNX Runtime),
    for every architecture the fused export writes, on a pruned model (uneven heads, FFN cut)."""
    model = prune.prune_ffn(prune.prune_heads(tiny_model(arch, seed=1), {0: [0, 2]}), {1: list(range(20))})
    if fused_support(model) is not None:
        pytest.skip(f"no fused graph for {arch}: {fused_support(model)}")
    fp32 = logits(model, batch)
    with torch.no_grad(), fake_quantized(model, embedding_bits=bits, position_bits=8):
        fq = model(**batch).logits
    # the int8 kernels of PyTorch round activations differently: that parity is not this one's
    _skip_if_saturating()
    res = export_fused_onnx(Q.quantize_rest(model, bits, 8), tokenizer, tmp_path / "m.onnx", tolerance=1.0,
                            config=PADDED)
    ort = res.predictor({k: v.numpy() for k, v in batch.items()})
    torch.testing.assert_close(fq, ort, atol=1e-5, rtol=0)
    assert (fq - fp32).abs().max() > 1e-4                   # the rounding is really in the loop
    torch.testing.assert_close(logits(model, batch), fp32, atol=0, rtol=0)     # and gone after it


def test_a_task_vocabulary_table_is_rounded_too(tokenizer, batch, tmp_path):
    model = tiny_model("bert", seed=2)
    texts = ["a good movie", "the worst film of the year , really bad", "fine"] * 4
    small, _ = prune.prune_vocab(model, tokenizer, texts)
    b = dict(tokenizer(texts[:3], padding=True, return_tensors="pt"))
    with torch.no_grad(), fake_quantized(small, embedding_bits=4):
        fq = small(**b).logits
    _skip_if_saturating()
    res = export_fused_onnx(Q.quantize_rest(small, 4, 8), tokenizer, tmp_path / "v.onnx", tolerance=1.0,
                            config=PADDED)
    torch.testing.assert_close(fq, res.predictor({k: v.numpy() for k, v in b.items()}), atol=1e-5, rtol=0)


def test_rounding_matches_the_stored_codes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 16)
    torch.testing.assert_close(int8_weight(lin.weight), Int8Linear.from_linear(lin).weight, atol=0, rtol=0)
    emb = torch.nn.Embedding(30, 24)
    for bits in (4, 8):
        torch.testing.assert_close(row_codes_weight(emb.weight, bits), QuantEmbedding.from_embedding(emb, bits).weight,
                                   atol=0, rtol=0)
    x = torch.randn(3, 5, 8) * 4 + 1
    q = uint8_activation(x)
    scale = (x.max() - torch.clamp(x.min(), max=0)) / 255
    assert len(torch.unique(torch.round((q - q.min()) / scale))) <= 256
    assert (q - x).abs().max() <= scale / 2 + 1e-6
    assert torch.equal(uint8_activation(torch.zeros(4)), torch.zeros(4))
    pos = torch.rand(10) + 0.5                              # all positive: the range still holds 0 exactly
    assert float(uint8_activation(pos).min()) >= 0


def test_gradients_pass_the_rounding_straight_through(tokenizer, batch):
    model = tiny_model("bert", seed=0)
    with fake_quantized(model, embedding_bits=4):
        model(**batch).logits.sum().backward()
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    emb = model.bert.embeddings.word_embeddings.weight
    assert w.grad is not None and w.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0


def test_the_model_is_restored_even_after_an_error(batch):
    model = tiny_model("bert", seed=0)
    before = logits(model, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with fake_quantized(model):
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())
    torch.testing.assert_close(logits(model, batch), before, atol=0, rtol=0)
    with pytest.raises(ValueError):
        with fake_quantized(model, embedding_bits=9):
            pass
    assert not any("forward" in vars(m) for m in model.modules())


def test_already_quantized_layers_are_left_alone(batch):
    model = Q.quantize_rest(tiny_model("bert", seed=0), 8, 8)
    before = logits(model, batch)
    with torch.no_grad(), fake_quantized(model, activations=False):
        torch.testing.assert_close(model(**batch).logits, before, atol=0, rtol=0)


def test_quant_aware_distillation_trains_through_the_rounding_and_replays(tokenizer, batch):
    teacher = _spread(tiny_model("bert", seed=0))
    student = prune.prune_heads(teacher, {0: [0, 1]})
    train = tiny_split(64, seed=7)
    kw = dict(steps=6, batch_size=16, alpha=1.0, lr=1e-3)
    plain = distill(student, teacher, tokenizer, train, **kw)
    qat = distill(student, teacher, tokenizer, train, quant_aware=True, quant_embedding_bits=4, **kw)
    step = qat.axlab_recipe[-1]
    assert step["params"]["quant_aware"] is True and step["params"]["quant_embedding_bits"] == 4
    assert not plain.axlab_recipe[-1]["params"]["quant_aware"]
    # the recipe step replays the same training, rounding included
    ctx = RecipeContext(tokenizer=tokenizer, splits=Splits("t", ["a", "b"], train, train, train, 0, "x", "x"))
    ctx.base = teacher
    replay = apply_step(copy.deepcopy(student), step, ctx)
    torch.testing.assert_close(logits(replay, batch), logits(qat, batch), atol=1e-6, rtol=0)
    # same data, seed and schedule: only the rounding differs, and it changes what is learnt
    assert (logits(qat, batch) - logits(plain, batch)).abs().max() > 1e-5
    assert not any("forward" in vars(m) for m in qat.modules())          # an ordinary fp32 model afterwards
    student_copy = copy.deepcopy(student)
    assert all(torch.equal(a, b) for a, b in zip(student_copy.state_dict().values(), student.state_dict().values()))
    with pytest.raises(ValueError, match="quant_embedding_bits"):
        DistillConfig(quant_embedding_bits=3)
    assert np.isfinite(qat.axlab_distill_stats["final_loss"])
