"""AxFormer search on tiny models: cached evaluation == full evaluation, the acceptance rule, replay, stop, cache."""
import copy

import pytest
import torch
from axlab.compress import apply_recipe, axformer
from axlab.compress.axformer import SearchConfig, _Evaluator, cached_search, search
from axlab.core.measure import evaluate
from axlab.core.progress import Stopped
from axlab.core.testing import tiny_model, tiny_split
from conftest import logits

VAL = tiny_split(40, seed=1)


pytestmark = pytest.mark.usefixtures("one_thread")



def _model(arch="bert", layers=3):
    return tiny_model(arch, layers=layers, seed=2)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_cached_suffix_evaluation_equals_full(arch, tokenizer):
    model = _model(arch)
    full = evaluate(model, tokenizer, VAL, batch_size=16)
    ev = _Evaluator(copy.deepcopy(model), tokenizer, VAL, 16)
    for start in (2, 1, 0):
        ev.set_start(start)
        loss, acc = ev.evaluate()
        assert abs(loss - full["loss"]) < 1e-5 and acc == full["accuracy"]
    ev.close()


def test_search_rule_log_and_replay(tokenizer, batch):
    model = _model()
    ref = logits(model, batch)
    res = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, topk_values=(2, 4)))
    torch.testing.assert_close(logits(model, batch), ref, atol=0, rtol=0)          # input untouched
    assert res.log and not res.stopped
    current, pending = res.base_loss, None
    for d in res.log:
        if d.kind != "hard_attention" and pending is not None:
            current, pending = pending, None
        assert d.loss_before == pytest.approx(current, abs=1e-7)
        if d.kept:
            assert d.loss_after < d.loss_before                                   # the paper's rule
            if d.kind == "hard_attention":                                        # the best k of the layer
                assert d.loss_after == min(e.loss_after for e in res.log if e.layer == d.layer and e.kind == d.kind)
                pending = d.loss_after
            else:
                current = d.loss_after
    current = pending if pending is not None else current
    assert res.final_loss == pytest.approx(current, abs=1e-7)
    # the suffix-cached losses are the real losses of the final model
    assert evaluate(res.model, tokenizer, VAL, batch_size=16)["loss"] == pytest.approx(res.final_loss, abs=1e-5)
    assert res.final_loss <= res.base_loss
    # the recipe holds concrete removals; replay needs no search and gives the same logits
    assert all(s["op"] in ("prune_heads", "prune_ffn", "hard_attention") for s in res.recipe)
    replay = apply_recipe(model, res.full_recipe)
    torch.testing.assert_close(logits(replay, batch), logits(res.model, batch), atol=0, rtol=0)
    kinds = [d.kind for d in res.log if d.layer == 2]
    assert kinds[0] == "ffn_block"                                               # top layer first, FFN block first
    assert [d.layer for d in res.log] == sorted([d.layer for d in res.log], reverse=True)


def test_tolerance_keeps_more_within_bound(tokenizer):
    model = _model()
    strict = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, stages=("ffn_block", "heads")))
    loose = search(model, tokenizer, VAL, tolerance=0.05, config=SearchConfig(batch_size=16, stages=("ffn_block", "heads")))
    assert sum(d.kept for d in loose.log) >= sum(d.kept for d in strict.log)
    assert sum(d.kept for d in loose.log) > 0
    assert loose.final_loss <= loose.base_loss + 0.05 + 1e-9 or any(
        d.kept and d.loss_after < d.loss_before for d in loose.log)


def test_stop_returns_consistent_partial_result(tokenizer, batch):
    model = _model()
    calls = []

    def cb(done, total, msg):
        calls.append(done)
        if len(calls) == 4:
            raise Stopped

    res = search(model, tokenizer, VAL, progress=cb, config=SearchConfig(batch_size=16))
    assert res.stopped and len(res.log) == 3
    replay = apply_recipe(model, res.full_recipe)
    torch.testing.assert_close(logits(replay, batch), logits(res.model, batch), atol=0, rtol=0)


def test_cached_search_reuses_result(tokenizer, batch, monkeypatch, tmp_path):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    from axlab.core.data import Splits
    splits = Splits("tiny", ["a", "b"], VAL, VAL, VAL, 0, "abc", "x")
    model = _model()
    cfg = SearchConfig(batch_size=16, stages=("heads",))
    first = cached_search(model, tokenizer, splits, config=cfg)
    second = cached_search(model, tokenizer, splits, config=cfg)
    assert not first.cached and second.cached
    assert second.recipe == first.recipe and len(second.log) == len(first.log)
    torch.testing.assert_close(logits(second.model, batch), logits(first.model, batch), atol=0, rtol=0)
    other = cached_search(model, tokenizer, splits, config=SearchConfig(batch_size=16, stages=("ffn_block",)))
    assert not other.cached


def test_calibrated_loss_is_the_loss_at_the_best_temperature():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=g)
    lg = torch.randn(200, 3, generator=g) + 2.5 * torch.nn.functional.one_hot(y, 3)
    over = 6 * lg                                                     # same ranking, over-confident
    plain = torch.nn.functional.cross_entropy(over, y).item()
    cal = axformer.calibrated_loss(over, y)
    assert cal < plain                                                # temperature removes the over-confidence
    assert cal == pytest.approx(axformer.calibrated_loss(lg, y), rel=0.02)   # invariant to the logit scale
    best = min(torch.nn.functional.cross_entropy(over / t, y).item() for t in torch.linspace(1, 12, 400))
    assert cal == pytest.approx(best, rel=0.01)


def test_criterion_guard_and_significance(tokenizer):
    model = _model()
    stages = ("ffn_block", "ffn_groups", "heads")
    plain = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, stages=stages))
    cal = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, stages=stages, criterion="calibrated_loss"))
    assert cal.base_loss <= plain.base_loss + 1e-9                    # the calibrated loss never exceeds the plain one
    guarded = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, stages=stages, accuracy_guard=True))
    assert guarded.final_accuracy >= guarded.base_accuracy            # accuracy never dropped at a kept step
    final = evaluate(apply_recipe(model, guarded.full_recipe), tokenizer, VAL, batch_size=16)
    assert final["accuracy"] == pytest.approx(guarded.final_accuracy)
    assert any(d.kept for d in plain.log)
    strict = search(model, tokenizer, VAL, config=SearchConfig(batch_size=16, stages=stages, significance=50.0))
    assert sum(d.kept for d in strict.log) <= sum(d.kept for d in plain.log)
    assert not any(d.kept for d in strict.log)                        # 50 standard errors: nothing is that clear


def test_bad_config_rejected():
    for kw in ({"stages": ("bogus",)}, {"tolerance": -1}, {"ffn_groups": 0}, {"topk_values": (0,)},
               {"criterion": "accuracy"}, {"significance": -1}):
        with pytest.raises(ValueError):
            SearchConfig(**kw)
    assert axformer.STAGES[0] == "ffn_block"


def test_decisions_frame_and_figure(tokenizer):
    res = search(_model(), tokenizer, VAL, config=SearchConfig(batch_size=16, stages=("heads",)))
    df = axformer.decisions_frame(res)
    assert len(df) == len(res.log) and df.kept.sum() == sum(d.kept for d in res.log)
    fig = axformer.loss_trace_figure(res)
    assert len(fig.data) == 3 and fig.data[2].y[0] == pytest.approx(res.base_loss)
    assert fig.data[2].y[-1] == pytest.approx(res.final_loss)
