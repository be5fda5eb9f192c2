"""Pruning claims on the real default model (MiniLM-L6, Rotten Tomatoes): kept small (subsets)."""
import statistics

import pytest
import torch
from axlab.analysis.importance import head_importance
from axlab.compress import apply_recipe, prune
from axlab.compress.axformer import SearchConfig, search
from axlab.core import registry
from axlab.core.attention import AttentionControl
from axlab.core.measure import evaluate, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real(default_bundle, default_splits):
    return default_bundle.model, default_bundle.tokenizer, default_splits


@pytest.fixture(scope="module")
def real_batch(real):
    _, tok, splits = real
    return tokenize(tok, splits.test.texts[:16])


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def test_real_parity_heads_ffn_layers(real, real_batch):
    model, _, _ = real
    heads = {0: [3, 7], 3: list(range(12)), 5: [0, 11]}
    gates = torch.ones(6, 12)
    for l, hs in heads.items():
        gates[l, hs] = 0
    pruned = prune.prune_heads(model, heads)
    torch.testing.assert_close(_logits(pruned, real_batch), _logits(model, real_batch, axlab=AttentionControl(gates=gates)),
                               atol=1e-4, rtol=0)
    # FFN neurons: removed == zeroed at the input of the down projection
    idx = list(range(0, 1536, 3))
    handle = registry.ffn_parts(model, 2).down.register_forward_pre_hook(
        lambda m, a: (a[0].index_fill(-1, torch.tensor(idx), 0.0),))
    ref = _logits(model, real_batch)
    handle.remove()
    torch.testing.assert_close(_logits(prune.prune_ffn(model, {2: idx}), real_batch), ref, atol=1e-4, rtol=0)
    # a dropped layer == a hook that returns the layer's input
    handle = registry.layers(model)[4].register_forward_hook(lambda m, a, o: a[0])
    ref = _logits(model, real_batch)
    handle.remove()
    torch.testing.assert_close(_logits(prune.drop_layers(model, [4]), real_batch), ref, atol=1e-5, rtol=0)


def test_real_gradient_beats_random_heads(real):
    """40% of heads by gradient importance loses less than 40% at random (mean of 3 seeds)."""
    model, tok, splits = real
    test = splits.test.head(400)
    imp = head_importance(model, tok, splits.validation.head(200), method="gradient", progress=False)
    grad = evaluate(prune.prune_heads(model, prune.heads_by_budget(imp, 0.4)), tok, test)["accuracy"]
    rand = [evaluate(prune.prune_heads(model, prune.random_heads(model, 0.4, seed=s)), tok, test)["accuracy"]
            for s in range(3)]
    assert grad > statistics.mean(rand)


def test_real_axformer_top_layers_replay(real, real_batch):
    """A short search (top layer, a validation subset): suffix-cached losses are real losses; replay exact."""
    model, tok, splits = real
    val = splits.validation.head(100)
    res = search(model, tok, val, config=SearchConfig(layers=[5], ffn_groups=2, topk_values=(8,)))
    assert res.final_loss <= res.base_loss
    assert evaluate(res.model, tok, val)["loss"] == pytest.approx(res.final_loss, abs=1e-4)
    replay = apply_recipe(model, res.full_recipe)
    torch.testing.assert_close(_logits(replay, real_batch), _logits(res.model, real_batch), atol=0, rtol=0)
    assert {d.layer for d in res.log} == {5} and len(res.log) >= 4
