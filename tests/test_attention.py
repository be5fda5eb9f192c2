import copy

import pytest
import torch
from axlab.core.attention import AttentionControl, get_topk, set_topk
from axlab.core.surgery import apply_layout, layout, remove_ffn_neurons_, remove_heads_
from axlab.core.testing import tiny_model
from conftest import logits


def test_axlab_equals_stock_eager(tiny, batch):
    stock = copy.deepcopy(tiny)
    stock.set_attn_implementation("eager")
    assert tiny.config._attn_implementation == "axlab"
    torch.testing.assert_close(logits(tiny, batch), logits(stock, batch), atol=1e-6, rtol=0)


def test_capture_matches_eager_attentions(tiny, batch):
    stock = copy.deepcopy(tiny)
    stock.set_attn_implementation("eager")
    with torch.no_grad():
        ref = stock(**batch, output_attentions=True).attentions
    ctrl = AttentionControl(capture=True)
    logits(tiny, batch, axlab=ctrl)
    assert sorted(ctrl.captured) == list(range(len(ref)))
    for i, a in enumerate(ref):
        torch.testing.assert_close(ctrl.captured[i], a, atol=1e-6, rtol=0)


def test_gates_of_ones_change_nothing(tiny, batch):
    gates = torch.ones(2, 4)
    torch.testing.assert_close(logits(tiny, batch, axlab=AttentionControl(gates=gates)), logits(tiny, batch))


@pytest.mark.parametrize("drop", [{0: [1], 1: [0, 3]}, {0: [0, 1, 2, 3]}, {0: [2], 1: [0, 1, 2, 3]}])
def test_gated_equals_physically_removed(tiny, batch, drop):
    gates = torch.ones(2, 4)
    for layer, heads in drop.items():
        gates[layer, heads] = 0
    gated = logits(tiny, batch, axlab=AttentionControl(gates=gates))
    pruned = copy.deepcopy(tiny)
    for layer, heads in drop.items():
        remove_heads_(pruned, layer, heads)
    torch.testing.assert_close(logits(pruned, batch), gated, atol=1e-5, rtol=0)
    # gates still address the original grid after pruning
    g2 = torch.ones(2, 4)
    g2[1, 1] = 0
    both = gates * g2
    torch.testing.assert_close(logits(pruned, batch, axlab=AttentionControl(gates=g2)),
                               logits(tiny, batch, axlab=AttentionControl(gates=both)), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in tiny.parameters())


def test_removing_in_two_steps_equals_one(tiny, batch):
    a = copy.deepcopy(tiny)
    remove_heads_(a, 0, [1])
    remove_heads_(a, 0, [3])
    b = copy.deepcopy(tiny)
    remove_heads_(b, 0, [1, 3])
    torch.testing.assert_close(logits(a, batch), logits(b, batch), atol=1e-6, rtol=0)


def test_layout_rebuilds_shapes(tiny, batch, arch):
    pruned = copy.deepcopy(tiny)
    remove_heads_(pruned, 0, [0, 2])
    remove_heads_(pruned, 1, [0, 1, 2, 3])
    remove_ffn_neurons_(pruned, 1, list(range(0, 128, 3)))
    set_topk(pruned, {0: 3})
    fresh = tiny_model(arch, seed=1)
    apply_layout(fresh, layout(pruned))
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert get_topk(fresh) == {0: 3}
    torch.testing.assert_close(logits(fresh, batch), logits(pruned, batch), atol=1e-6, rtol=0)


def test_topk_full_length_is_dense_and_small_k_changes(tiny, batch):
    ref = logits(tiny, batch)
    ctrl = AttentionControl(topk={0: 10_000, 1: 10_000})
    torch.testing.assert_close(logits(tiny, batch, axlab=ctrl), ref)
    ctrl = AttentionControl(topk={0: 1}, capture=True)
    out = logits(tiny, batch, axlab=ctrl)
    assert not torch.allclose(out, ref)
    w = ctrl.captured[0]
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
    assert int((w > 0).sum(-1).max()) == 1


def test_ffn_neurons_removed_equals_zeroed(tiny, batch):
    import axlab.core.registry as R
    zeroed = copy.deepcopy(tiny)
    idx = [0, 5, 7, 100]
    with torch.no_grad():
        R.ffn_parts(zeroed, 0).down.weight[:, idx] = 0
    pruned = copy.deepcopy(tiny)
    remove_ffn_neurons_(pruned, 0, idx)
    torch.testing.assert_close(logits(pruned, batch), logits(zeroed, batch), atol=1e-5, rtol=0)
