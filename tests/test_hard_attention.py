"""Top-k hard attention as a transform and a search, on tiny models."""
import pytest
import torch
from axlab.compress import apply_recipe
from axlab.compress.axformer import search_topk
from axlab.compress.hard_attention import hard_attention
from axlab.core.attention import AttentionControl, get_topk
from axlab.core.errors import AxlabError
from axlab.core.measure import evaluate
from axlab.core.testing import tiny_model, tiny_split
from conftest import logits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_transform_equals_per_call_topk_and_replays(tiny, batch):
    out = hard_attention(tiny, {1: 2})
    assert get_topk(out) == {1: 2} and get_topk(tiny) == {}
    ref = logits(tiny, batch, axlab=AttentionControl(topk={1: 2}))
    torch.testing.assert_close(logits(out, batch), ref, atol=0, rtol=0)
    assert not torch.allclose(ref, logits(tiny, batch))
    torch.testing.assert_close(logits(apply_recipe(tiny, out.axlab_recipe), batch), ref, atol=0, rtol=0)


def test_search_topk_keeps_only_improvements(tokenizer):
    model = tiny_model("bert", layers=3, seed=4)
    val = tiny_split(40, seed=5)
    res = search_topk(model, tokenizer, val, ks=(1, 2, 4))
    assert res.final_loss <= res.base_loss
    assert {d.layer for d in res.log} == {0, 1, 2}
    for layer, k in res.topk.items():
        tried = [d for d in res.log if d.layer == layer]
        best = min(tried, key=lambda d: d.loss_after)
        assert best.target == k and best.kept and best.loss_after < best.loss_before
    for d in res.log:
        if d.layer not in res.topk:
            assert not d.kept and d.loss_after >= d.loss_before
    assert evaluate(res.model, tokenizer, val)["loss"] == pytest.approx(res.final_loss, abs=1e-5)


def test_bad_topk(tiny):
    with pytest.raises(AxlabError):
        hard_attention(tiny, {0: 0})
    with pytest.raises(AxlabError):
        hard_attention(tiny, {9: 2})
