import copy

import numpy as np
import pytest
import torch
from axlab.analysis import viz
from axlab.analysis.attributions import compare_attributions, token_attributions
from axlab.core.errors import AxlabError
from axlab.core.surgery import remove_heads_
from axlab.core.testing import tiny_model

TEXT = "a really boring film , not fun at all"


pytestmark = pytest.mark.usefixtures("one_thread")


def _sharp(arch, seed=0):
    """A tiny model whose prediction reacts to its words (scaled word embeddings and classifier)."""
    model = tiny_model(arch, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "classifier" in name and p.dim() == 2:
                p.mul_(5.0)
            if "word_embeddings" in name:
                p.mul_(30.0)
    return model


def _prob(model, ids, target):
    with torch.no_grad():
        return float(torch.softmax(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, -1)[0, target])


def test_integrated_gradients_are_complete(arch, tokenizer):
    model = _sharp(arch)
    a = token_attributions(model, tokenizer, TEXT, n_steps=64)
    gap = a.output - a.baseline_output
    assert a.method == "integrated_gradients"
    assert abs(gap) > 1e-4                                  # a real change to explain
    assert a.scores.sum() == pytest.approx(gap, rel=1e-2, abs=1e-7)
    assert abs(a.delta) <= 1e-2 * abs(gap)
    assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]" and len(a.scores) == len(a.tokens)
    assert a.target == int(np.argmax(a.probs)) and a.probs.sum() == pytest.approx(1.0)


def test_baseline_is_the_padded_sentence(tokenizer):
    model = _sharp("bert")
    a = token_attributions(model, tokenizer, TEXT, target=1, n_steps=8)
    ids = tokenizer([TEXT], return_tensors="pt")["input_ids"]
    base = ids.clone()
    base[0, 1:-1] = tokenizer.pad_token_id
    assert a.target == 1
    assert a.output == pytest.approx(_prob(model, ids, 1), abs=1e-6)
    assert a.baseline_output == pytest.approx(_prob(model, base, 1), abs=1e-6)


def test_occlusion_replaces_one_token_at_a_time(tokenizer):
    model = _sharp("electra")
    a = token_attributions(model, tokenizer, TEXT, method="occlusion")
    ids = tokenizer([TEXT], return_tensors="pt")["input_ids"]
    full = _prob(model, ids, a.target)
    assert a.method == "occlusion" and a.scores[0] == 0 and a.scores[-1] == 0
    for i in (1, 4):
        hole = ids.clone()
        hole[0, i] = tokenizer.pad_token_id
        assert a.scores[i] == pytest.approx(full - _prob(model, hole, a.target), abs=1e-6)


def test_int8_model_without_gradients_falls_back_to_occlusion(tokenizer):
    model = _sharp("bert")
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    a = token_attributions(q, tokenizer, TEXT)
    assert a.method == "occlusion" and np.isfinite(a.scores).all() and np.abs(a.scores).max() > 0
    with pytest.raises(AxlabError, match="occlusion"):
        token_attributions(q, tokenizer, TEXT, method="integrated_gradients")


def test_before_after_uses_one_target(tokenizer):
    base = _sharp("bert")
    variant = copy.deepcopy(base)
    remove_heads_(variant, 0, [0, 1, 2])
    both = compare_attributions({"base": base, "pruned": variant}, tokenizer, TEXT, n_steps=16)
    assert both["base"].target == both["pruned"].target == both["base"].predicted
    assert both["base"].tokens == both["pruned"].tokens
    assert not np.allclose(both["base"].scores, both["pruned"].scores)
    html = viz.attribution_compare_html(both)
    token_spans = html.count("<span title=")                   # one per token and model (the legend has no title)
    assert token_spans == 2 * len(both["base"].tokens) and "base: p(" in html and "pruned: p(" in html


def test_bad_inputs_are_explained(tokenizer):
    model = tiny_model("bert")
    with pytest.raises(AxlabError, match="empty"):
        token_attributions(model, tokenizer, "   ")
    with pytest.raises(AxlabError, match="Class 7"):
        token_attributions(model, tokenizer, TEXT, target=7)
    with pytest.raises(AxlabError, match="Unknown attribution method"):
        token_attributions(model, tokenizer, TEXT, method="lime")


@pytest.mark.slow
def test_real_model_attributions_are_complete_and_point_at_sentiment(default_bundle):
    model, tok = default_bundle.model, default_bundle.tokenizer
    a = token_attributions(model, tok, "a gorgeous, witty and moving film", n_steps=50)
    gap = a.output - a.baseline_output
    assert abs(a.delta) <= 0.02 * abs(gap) + 1e-4
    assert a.label == "fresh" if "fresh" in default_bundle.labels else True
    words = {t: s for t, s in zip(a.tokens, a.scores)}
    # the sentiment words push toward the predicted (positive) class more than the article does
    assert max(words.get("gorgeous", -1), words.get("witty", -1)) > words["a"]
