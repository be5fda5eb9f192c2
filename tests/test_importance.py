import copy

import numpy as np
import pytest
import torch
from axlab.analysis import importance
from axlab.analysis.importance import (
    agreement,
    captum_importance,
    gradient_importance,
    head_ablation,
    head_importance,
    rank_heads,
)
from axlab.core.attention import AttentionControl
from axlab.core.errors import AxlabError
from axlab.core.measure import evaluate, tokenize
from axlab.core.surgery import remove_heads_
from axlab.core.testing import tiny_model
from axlab.store import cache
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


def _sharpen(model, factor=30.0):
    """Scale the classifier so a random tiny model's loss reacts visibly to its heads."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "classifier" in name and p.dim() == 2:
                p.mul_(factor)
    return model


def _batch_loss(model, tokenizer, split, gates):
    batch = tokenize(tokenizer, split.texts)
    with torch.no_grad():
        logits = model(**batch, axlab=AttentionControl(gates=gates)).logits
    return float(nn.functional.cross_entropy(logits, torch.as_tensor(split.labels), reduction="sum"))


def test_gradient_matches_finite_difference(arch, tokenizer, split):
    model = _sharpen(tiny_model(arch)).double()
    small = split.head(12)
    imp = gradient_importance(model, tokenizer, small, batch_size=len(small), progress=False)
    n_layers, n_heads = imp.shape
    eps = 1e-4
    fd = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            up = torch.ones(n_layers, n_heads, dtype=torch.float64)
            down = up.clone()
            up[layer, head] += eps
            down[layer, head] -= eps
            fd[layer, head] = (_batch_loss(model, tokenizer, small, up)
                               - _batch_loss(model, tokenizer, small, down)) / (2 * eps)
    assert imp.abs().max() > 1e-4      # the check below is not trivially about zeros
    torch.testing.assert_close(imp.float(), fd.abs() / len(small), rtol=1e-3, atol=1e-7)


def test_ablation_equals_physically_removed_heads(arch, tokenizer, split):
    model = _sharpen(tiny_model(arch, layers=3))
    key_before = cache.model_key(model)
    res = head_ablation(model, tokenizer, split, progress=False, cache_results=False)
    base = evaluate(model, tokenizer, split, progress=False)
    assert res.base_loss == pytest.approx(base["loss"], abs=1e-5)
    assert res.base_accuracy == pytest.approx(base["accuracy"])
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        pruned = copy.deepcopy(model)
        remove_heads_(pruned, layer, [head])
        ev = evaluate(pruned, tokenizer, split, progress=False)
        assert float(res.loss[layer, head]) == pytest.approx(ev["loss"], abs=1e-5)
        assert float(res.accuracy[layer, head]) == pytest.approx(ev["accuracy"])
        assert float(res.loss_increase[layer, head]) == pytest.approx(ev["loss"] - base["loss"], abs=1e-5)
    table = res.table()
    assert len(table) == 12 and table["loss_increase"].is_monotonic_decreasing
    assert cache.model_key(model) == key_before            # the caller's model is untouched


def test_captum_integrated_gradients_is_complete(tokenizer, split):
    model = _sharpen(tiny_model("distilbert"))
    small = split.head(6)
    imp, delta = captum_importance(model, tokenizer, small, batch_size=6, n_steps=8, progress=False,
                                   return_delta=True)
    # completeness: sum of attributions = f(all heads on) - f(all heads off), f = mean log p(y)
    def f(gates):
        return -_batch_loss(model, tokenizer, small, gates) / len(small)
    gap = f(torch.ones(2, 4)) - f(torch.zeros(2, 4))
    assert abs(gap) > 1e-3
    assert float(imp.sum()) == pytest.approx(gap, rel=1e-2, abs=1e-5)
    assert delta < 1e-2 * abs(gap) + 1e-6


@pytest.mark.parametrize("method", ["gradient", "ablation", "captum"])
def test_removed_heads_are_nan_and_others_finite(tokenizer, split, method):
    model = tiny_model("bert")
    remove_heads_(model, 0, [2])
    remove_heads_(model, 1, [0, 1, 2, 3])
    imp = head_importance(model, tokenizer, split.head(8), method=method, progress=False, cache_results=False)
    expected_nan = torch.zeros(2, 4, dtype=torch.bool)
    expected_nan[0, 2] = True
    expected_nan[1] = True
    assert torch.equal(torch.isnan(imp), expected_nan)


def test_gates_refer_to_original_heads_after_pruning(tokenizer, split):
    """Ablating head (0, 3) of a pruned model equals ablating it in the gated full model."""
    model = _sharpen(tiny_model("bert"))
    pruned = copy.deepcopy(model)
    remove_heads_(pruned, 0, [1])
    res = head_ablation(pruned, tokenizer, split, progress=False, cache_results=False)
    gates = torch.ones(2, 4)
    gates[0, [1, 3]] = 0
    loss = _batch_loss(model, tokenizer, split, gates) / len(split)
    assert float(res.loss[0, 3]) == pytest.approx(loss, abs=1e-5)


def test_progress_callback_reaches_total(tokenizer, split):
    calls = []
    head_importance(tiny_model("bert"), tokenizer, split, method="ablation", cache_results=False,
                    progress=lambda done, total, msg: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] == 9          # 8 heads + the full model
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_rank_heads_orders_and_skips_removed():
    imp = torch.tensor([[0.1, float("nan"), 0.5], [0.3, 0.2, -0.4]])
    ranked = rank_heads(imp)
    assert list(zip(ranked["layer"], ranked["head"])) == [(0, 2), (1, 0), (1, 1), (0, 0), (1, 2)]
    assert list(ranked["rank"]) == [1, 2, 3, 4, 5]
    assert ranked.importance.is_monotonic_decreasing


def test_agreement_is_spearman():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4))
    b = a ** 3                     # same order -> 1
    c = -a                         # reversed -> -1
    d = rng.normal(size=(3, 4))
    table = agreement({"a": a, "b": torch.as_tensor(b), "c": c, "d": d})
    assert table.loc["a", "b"] == pytest.approx(1.0)
    assert table.loc["a", "c"] == pytest.approx(-1.0)
    ranks = lambda x: np.argsort(np.argsort(x.ravel()))  # noqa: E731  (no ties here)
    assert table.loc["a", "d"] == pytest.approx(np.corrcoef(ranks(a), ranks(d))[0, 1])
    a_nan = a.copy()
    a_nan[0, 0] = np.nan
    assert agreement({"a": a_nan, "b": b}).loc["a", "b"] == pytest.approx(1.0)


def test_unknown_method_and_empty_split_are_clear(tokenizer, split):
    with pytest.raises(AxlabError, match="Unknown importance method"):
        head_importance(tiny_model("bert"), tokenizer, split, method="magic")
    with pytest.raises(AxlabError, match="empty"):
        head_importance(tiny_model("bert"), tokenizer, type(split)([], []))


def test_results_are_cached_by_model_and_data(tokenizer, split, tmp_path, monkeypatch):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    model = tiny_model("bert")
    calls = []
    real = importance.METHODS["gradient"]

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setitem(importance.METHODS, "gradient", counting)
    first = head_importance(model, tokenizer, split, progress=False)
    again = head_importance(model, tokenizer, split, progress=False)
    assert len(calls) == 1 and torch.equal(first, again)
    head_importance(model, tokenizer, split.head(10), progress=False)          # other data
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    head_importance(other, tokenizer, split, progress=False)                   # other weights
    head_importance(model, tokenizer, split, progress=False, batch_size=8)     # other settings
    assert len(calls) == 4
    before = model.state_dict()["classifier.weight"].clone()
    head_importance(model, tokenizer, split, progress=False, cache_results=False)
    assert len(calls) == 5 and torch.equal(model.state_dict()["classifier.weight"], before)


@pytest.mark.slow
def test_real_top_heads_hurt_more_than_bottom_heads(default_bundle, default_splits):
    """Michel et al. on the real model: gating off the 12 most important heads (of 72, scored on
    validation 0-299) costs more held-out accuracy (validation 300-599) than gating off the 12
    least important ones.

    Measured here: the claim holds for accuracy, not for cross-entropy: the fine-tuned default
    model is overconfident, so removing heads (top or bottom) *lowers* its held-out loss
    (0.675 -> 0.593 top / 0.634 bottom) while accuracy drops (0.807 -> 0.767 top / 0.800
    bottom). The test asserts the accuracy ordering and that removal lowers the loss.
    """
    model, tok = default_bundle.model, default_bundle.tokenizer
    val = default_splits.validation
    score_on, check_on = val.head(300), type(val)(val.texts[300:600], val.labels[300:600])
    imp = head_importance(model, tok, score_on, method="gradient", progress=False, cache_results=False)
    ranked = rank_heads(imp)

    def loss_acc_without(rows):
        gates = torch.ones_like(imp)
        if rows is not None:
            gates[list(rows["layer"]), list(rows["head"])] = 0
        total, correct = 0.0, 0
        for start in range(0, len(check_on), 64):
            batch = tokenize(tok, check_on.texts[start:start + 64])
            with torch.no_grad():
                logits = model(**batch, axlab=AttentionControl(gates=gates)).logits
            y = torch.as_tensor(check_on.labels[start:start + 64])
            total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        return total / len(check_on), correct / len(check_on)

    base = loss_acc_without(None)
    top, bottom = loss_acc_without(ranked.head(12)), loss_acc_without(ranked.tail(12))
    assert top[1] < bottom[1] <= base[1]
    assert top[0] < base[0] and bottom[0] < base[0]        # the overconfidence effect described above


def test_int8_variant_needs_ablation(tokenizer, split):
    q = torch.ao.quantization.quantize_dynamic(tiny_model("bert"), {torch.nn.Linear}, dtype=torch.qint8)
    for method in ("gradient", "captum"):
        with pytest.raises(AxlabError, match="ablation"):
            head_importance(q, tokenizer, split.head(4), method=method, cache_results=False, progress=False)
    imp = head_importance(q, tokenizer, split.head(4), method="ablation", cache_results=False, progress=False)
    assert imp.shape == (2, 4) and torch.isfinite(imp).all()


@pytest.mark.parametrize("method", ["gradient", "ablation"])
def test_gates_that_never_reach_the_attention_are_an_error_not_zeros(tokenizer, method):
    """A model whose attention ignores axlab's control (switched back to the stock eager function, as
    an unsupported transformers version would) must not report every head as unimportant."""
    from axlab.analysis.importance import head_importance
    from axlab.core.testing import tiny_split
    model = tiny_model("bert", seed=0)
    model.set_attn_implementation("eager")
    with pytest.raises(AxlabError, match="never received"):
        head_importance(model, tokenizer, tiny_split(16), method=method, progress=False, cache_results=False)
