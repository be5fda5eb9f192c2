"""Vision transformers (ViT, DeiT, DINOv2) run through the same attention function and
surgery as the text encoders: parity on tiny random models of each."""

from __future__ import annotations

import copy

import pytest
import torch

from axlab.compress.prune import drop_layers, prune_ffn, prune_heads
from axlab.core import registry, surgery
from axlab.core.attention import AttentionControl, set_topk
from axlab.core.errors import UnsupportedModelError
from axlab.core.testing import VISION_ARCHS, tiny_pixels, tiny_vision_model

ATOL = 1e-5


@pytest.fixture(params=VISION_ARCHS)
def varch(request):
    return request.param


def logits(model, x, **kw):
    with torch.no_grad():
        return model(pixel_values=x, **kw).logits


def test_registry_knows_the_parts(varch):
    m = tiny_vision_model(varch)
    assert registry.modality(m) == "image" and varch in registry.IMAGE_TYPES
    assert len(registry.layers(m)) == 2
    p = registry.attention_parts(m, 0)
    assert p.n_heads == 4 and p.head_dim == 8 and p.o.in_features == 32
    f = registry.ffn_parts(m, 1)
    assert f.up.in_features == 32 and f.down.out_features == 32
    with pytest.raises(UnsupportedModelError, match="no word embeddings"):
        registry.word_embeddings(m)


def test_axlab_attention_equals_stock_eager(varch):
    """With nothing set, the axlab function computes what transformers' own eager attention does."""
    m = tiny_vision_model(varch)
    stock = copy.deepcopy(m)
    stock.set_attn_implementation("eager")
    x = tiny_pixels(3)
    assert torch.allclose(logits(m, x), logits(stock, x), atol=ATOL)


def test_gated_heads_equal_removed_heads(varch):
    m = tiny_vision_model(varch)
    x = tiny_pixels(3)
    heads = {0: [1, 3], 1: [0, 1, 2, 3]}             # layer 1 loses every head
    gates = torch.ones(2, 4)
    for layer, hs in heads.items():
        gates[layer, hs] = 0
    gated = logits(m, x, axlab=AttentionControl(gates=gates))
    pruned = prune_heads(m, heads)
    assert torch.allclose(logits(pruned, x), gated, atol=ATOL)
    assert registry.attention_parts(pruned, 0).n_heads == 2
    assert isinstance(registry.attention_module(pruned, 1), surgery.EmptyAttention)
    assert not torch.allclose(gated, logits(m, x), atol=1e-3)     # the heads did matter
    assert registry.attention_parts(m, 0).n_heads == 4            # the input model is untouched


def test_capture_and_topk(varch):
    m = tiny_vision_model(varch)
    x = tiny_pixels(2)
    ctrl = AttentionControl(capture=True)
    logits(m, x, axlab=ctrl)
    t = (28 // 7) ** 2 + (2 if varch == "deit" else 1)            # patches + [CLS] (+ distillation token)
    assert ctrl.captured[0].shape == (2, 4, t, t)
    assert torch.allclose(ctrl.captured[1].sum(-1), torch.ones(2, 4, t), atol=1e-5)
    hard = copy.deepcopy(m)
    set_topk(hard, {0: 2})
    ctrl = AttentionControl(capture=True)
    logits(hard, x, axlab=ctrl)
    patch_rows = ctrl.captured[0][:, :, -16:]        # random init: DeiT's zero [CLS]/distillation rows tie
    assert int((patch_rows > 0).sum(-1).max()) <= 2
    assert not torch.allclose(logits(hard, x), logits(m, x), atol=1e-4)


def test_ffn_and_layer_removal_match_their_gated_versions(varch):
    m = tiny_vision_model(varch)
    x = tiny_pixels(3)
    # zeroing FFN neurons (their up-projection rows and biases, and down-projection columns) == removing them
    neurons = {0: [0, 5, 9], 1: list(range(64))}
    zeroed = copy.deepcopy(m)
    with torch.no_grad():
        for layer, idx in neurons.items():
            f = registry.ffn_parts(zeroed, layer)
            f.down.weight[:, idx] = 0
    pruned = prune_ffn(m, neurons)
    assert torch.allclose(logits(pruned, x), logits(zeroed, x), atol=ATOL)
    assert registry.ffn_parts(pruned, 0).up.out_features == 61
    # a dropped layer is the identity
    dropped = drop_layers(m, [1])
    assert surgery.is_skipped(dropped, 1)
    assert logits(dropped, x).shape == (3, 3)


def test_layout_round_trip(varch):
    """A fresh model reshaped by the pruned one's layout takes its state dict and gives the same logits."""
    m = tiny_vision_model(varch)
    x = tiny_pixels(2)
    pruned = prune_ffn(prune_heads(m, {0: [2], 1: [0, 1]}), {1: [3, 4]})
    fresh = surgery.apply_layout(tiny_vision_model(varch, seed=1), surgery.layout(pruned))
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.allclose(logits(fresh, x), logits(pruned, x), atol=ATOL)


def test_weight_quantization_works_on_vision_models(varch):
    from axlab.compress.quantize import int8_dynamic, rtn
    from axlab.core.qmodules import QuantLinear
    m = tiny_vision_model(varch)
    x = tiny_pixels(3)
    ref = logits(m, x)
    q8 = rtn(m, 8)
    assert any(isinstance(mod, QuantLinear) for mod in q8.modules())
    assert torch.allclose(logits(q8, x), ref, atol=2e-2)
    q2 = rtn(m, 2)
    assert (logits(q2, x) - ref).abs().max() > (logits(q8, x) - ref).abs().max()
    assert logits(int8_dynamic(m), x).shape == ref.shape
    with pytest.raises(UnsupportedModelError):
        rtn(m, 4, embeddings=True)
