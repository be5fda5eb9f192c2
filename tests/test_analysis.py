import copy
import json
import re

import numpy as np
import pytest
import torch
from axlab.analysis import viz
from axlab.analysis.attention_maps import attention_for, rollout
from axlab.analysis.head_stats import STATISTICS, head_statistics, punctuation_ids
from axlab.cli import main
from axlab.core.data import Split
from axlab.core.errors import AxlabError
from axlab.core.registry import attention_parts
from axlab.core.surgery import remove_heads_
from axlab.core.testing import save_tiny, tiny_model
from axlab.store import cache

TEXTS = ["a good film .", "the very long and boring plot was not fun at all , really", "great !"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_attention_for_matches_eager_without_padding(tiny, tokenizer):
    res = attention_for(tiny, tokenizer, TEXTS)
    stock = copy.deepcopy(tiny)
    stock.set_attn_implementation("eager")
    for i, text in enumerate(TEXTS):
        alone = tokenizer([text], return_tensors="pt")          # no padding at all
        with torch.no_grad():
            ref = stock(**alone, output_attentions=True).attentions
        assert res.tokens[i] == tokenizer.convert_ids_to_tokens(alone["input_ids"][0])
        assert "[PAD]" not in res.tokens[i]
        for layer, a in enumerate(ref):
            assert res.weights[i][layer].shape == a[0].shape
            np.testing.assert_allclose(res.weights[i][layer], a[0].numpy(), atol=1e-5)
    assert res.special[0][0] and res.special[0][-1] and not any(res.special[0][1:-1])


def test_removed_heads_show_as_nan_on_original_grid(tokenizer):
    model = tiny_model("bert")
    remove_heads_(model, 0, [1])
    remove_heads_(model, 1, [0, 1, 2, 3])
    res = attention_for(model, tokenizer, "a fine film")
    assert res.head_ids == [[0, 2, 3], []]
    assert np.isnan(res.weights[0][0][1]).all() and np.isnan(res.weights[0][1]).all()
    np.testing.assert_allclose(res.weights[0][0][[0, 2, 3]].sum(-1), 1.0, atol=1e-5)
    with pytest.raises(AxlabError, match="removed"):
        res.head(0, 1)
    with pytest.raises(AxlabError, match="no head"):
        res.head(5, 0)
    with pytest.raises(AxlabError):
        attention_for(model, tokenizer, "  ")


def test_rollout_rows_sum_to_one_and_follow_the_formula(tiny, tokenizer):
    res = attention_for(tiny, tokenizer, TEXTS)
    for i in range(len(TEXTS)):
        r = rollout(res, i)
        t = len(res.tokens[i])
        assert r.shape == (t, t)
        np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
        assert (r >= 0).all()
    stack = res.stack(1).astype(np.float64)                    # (L, H, T, T)
    eye = np.eye(stack.shape[-1])
    a = [0.5 * eye + 0.5 * stack[layer].mean(0) for layer in range(stack.shape[0])]
    np.testing.assert_allclose(rollout(res, 1), a[1] @ a[0], atol=1e-9)
    np.testing.assert_allclose(rollout(res, 1, residual=1.0), eye)
    np.testing.assert_allclose(rollout(res, 1, residual=0.0, layers=1), stack[0].mean(0), atol=1e-9)


def test_rollout_rows_sum_to_one_with_an_empty_layer(tokenizer):
    model = tiny_model("distilbert")
    remove_heads_(model, 0, [0, 1, 2, 3])
    remove_heads_(model, 1, [3])
    res = attention_for(model, tokenizer, TEXTS[1])
    r = rollout(res)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
    stack = res.stack(0).astype(np.float64)
    np.testing.assert_allclose(r, 0.5 * np.eye(len(r)) + 0.5 * np.nanmean(stack[1], 0), atol=1e-9)


def _naive_stats(model, tokenizer, texts):
    """Per-text loop over attention_for results: the reference for head_statistics."""
    res = attention_for(model, tokenizer, texts)
    punct = punctuation_ids(tokenizer)
    sums = {k: 0.0 for k in STATISTICS}
    n = 0
    for i in range(len(texts)):
        ids = tokenizer(texts[i])["input_ids"]
        w = res.stack(i).astype(np.float64)                     # (L, H, T, T)
        t = w.shape[-1]
        dist = np.abs(np.arange(t)[:, None] - np.arange(t)[None, :])
        cls = np.array([j == tokenizer.cls_token_id for j in ids], float)
        sep = np.array([j == tokenizer.sep_token_id for j in ids], float)
        pun = np.array([bool(punct[j]) for j in ids], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logw = np.where(w > 0, np.log(w), 0.0)
        sums["entropy"] = sums["entropy"] + (-(w * logw).sum(-1)).sum(-1)
        sums["mean_distance"] = sums["mean_distance"] + (w * dist).sum(-1).sum(-1)
        sums["cls_share"] = sums["cls_share"] + (w @ cls).sum(-1)
        sums["sep_share"] = sums["sep_share"] + (w @ sep).sum(-1)
        sums["punct_share"] = sums["punct_share"] + (w @ pun).sum(-1)
        n += t
    return {k: v / n for k, v in sums.items()}


def test_head_statistics_match_a_per_text_loop(tokenizer, split):
    model = tiny_model("bert")
    remove_heads_(model, 1, [2])
    texts = TEXTS + split.texts[:9]
    stats = head_statistics(model, tokenizer, Split(texts, [0] * len(texts)), batch_size=5, cache_results=False,
                            progress=False)
    ref = _naive_stats(model, tokenizer, texts)
    assert set(stats) == set(STATISTICS)
    for name in STATISTICS:
        assert stats[name].shape == (2, 4)
        np.testing.assert_allclose(stats[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.isnan(stats["entropy"][1, 2]) and np.isfinite(stats["entropy"][0]).all()
    assert stats["punct_share"][0, 0] > 0       # the texts do contain punctuation


def test_a_uniform_head_has_maximal_entropy_and_distance(tokenizer):
    """Zeroing one head's queries and keys makes it attend uniformly: its entropy is log T and
    its mean distance the mean |i - j| over all pairs; its neighbours are unchanged."""
    model = tiny_model("bert")
    texts = [TEXTS[1]] * 2
    before = head_statistics(model, tokenizer, Split(texts, [0, 0]), cache_results=False, progress=False)
    parts = attention_parts(model, 0)
    d = parts.head_dim
    with torch.no_grad():
        parts.q.weight[:d] = 0
        parts.k.weight[:d] = 0
        parts.q.bias[:d] = 0
        parts.k.bias[:d] = 0
    after = head_statistics(model, tokenizer, Split(texts, [0, 0]), cache_results=False, progress=False)
    # zero q/k -> uniform attention -> maximal entropy (log T averaged) for that head
    t = len(tokenizer(texts[0])["input_ids"])
    assert after["entropy"][0, 0] == pytest.approx(np.log(t), rel=1e-5)
    assert after["entropy"][0, 0] >= before["entropy"][0, 0]
    np.testing.assert_allclose(after["entropy"][0, 1:], before["entropy"][0, 1:])
    assert after["mean_distance"][0, 0] == pytest.approx(np.mean(np.abs(np.arange(t)[:, None] - np.arange(t))),
                                                         rel=1e-5)


def test_statistics_are_cached(tokenizer, split, tmp_path, monkeypatch):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    model = tiny_model("bert")
    first = head_statistics(model, tokenizer, split, progress=False)
    files = list((tmp_path / "cache" / "analysis").glob("head_stats-*.npz"))
    assert len(files) == 1
    second = head_statistics(model, tokenizer, split, progress=False)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    head_statistics(model, tokenizer, split, n=5, progress=False)
    assert len(list((tmp_path / "cache" / "analysis").glob("head_stats-*.npz"))) == 2


def test_model_key_and_split_key_follow_content():
    a, b = tiny_model("bert"), tiny_model("bert")
    assert cache.model_key(a) == cache.model_key(b)
    pruned = copy.deepcopy(a)
    remove_heads_(pruned, 0, [1])
    assert cache.model_key(pruned) != cache.model_key(a)
    with torch.no_grad():
        b.classifier.weight[0, 0] += 1e-6
    assert cache.model_key(a) != cache.model_key(b)
    s = Split(["a", "b"], [0, 1])
    assert cache.split_key(s) == cache.split_key(Split(["a", "b"], [0, 1]))
    assert cache.split_key(s) != cache.split_key(Split(["a", "b"], [1, 0]))
    assert cache.split_key(s) != cache.split_key(Split(["ab", ""], [0, 1]))


def test_figures_show_real_tokens_only(tokenizer):
    model = tiny_model("bert")
    remove_heads_(model, 1, [3])
    res = attention_for(model, tokenizer, TEXTS)              # padded together in one batch
    fig = viz.head_heatmap(res, 0, 2, index=0)
    assert list(fig.layout.xaxis.ticktext) == res.tokens[0] and "[PAD]" not in fig.layout.xaxis.ticktext
    assert np.asarray(fig.data[0].z).shape == (len(res.tokens[0]),) * 2
    mv = viz.model_view(res, index=2)
    assert len(mv.data) == 7                                  # 8 heads, one removed
    assert all(np.asarray(tr.z).shape == (len(res.tokens[2]),) * 2 for tr in mv.data)
    bar = viz.rollout_figure(res, index=1)
    np.testing.assert_allclose(bar.data[0].y, rollout(res, 1)[0])
    assert viz.rollout_figure(res, kind="heatmap").data[0].z.shape == (len(res.tokens[0]),) * 2
    grid = viz.layer_head_heatmap(np.array([[1.0, np.nan], [0.5, 0.25]]), "t")
    assert grid.data[0].text[0][1] == "" and grid.data[0].text[1][0] == "0.50"
    ent = viz.sentence_entropy(res, 0)
    assert np.isnan(ent[1, 3]) and np.isfinite(ent[0]).all()
    assert ent[0, 0] == pytest.approx(np.mean([-(w * np.log(w)).sum() for w in res.head(0, 0).astype(float)]))
    picker = viz.head_picker(ent)
    assert sorted(map(tuple, picker.data[0].customdata)) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    figs = viz.statistics_figures({"entropy": np.ones((2, 4)), "cls_share": np.zeros((2, 4))})
    assert set(figs) == {"entropy", "cls_share"}


def test_saved_html_needs_no_network(tokenizer, tmp_path):
    res = attention_for(tiny_model("bert"), tokenizer, "a good film")
    path = viz.save_html(viz.model_view(res), tmp_path / "view.html")
    text = path.read_text()
    assert len(text) > 1_000_000                              # plotly.js is inlined
    assert not re.search(r"<script[^>]+src=", text)


def test_attribution_html_colours_and_escapes():
    out = viz.attribution_html(["[CLS]", "<b>", "good", "##ish", "[SEP]"], [0.0, -0.5, 1.0, 0.25, 0.0])
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "rgba(22,150,60,0.850)" in out                    # strongest positive = full green
    assert "rgba(210,40,40,0.425)" in out                    # half-strength negative = red
    assert ">ish</span>" in out and "> ish" not in out          # word pieces glue to the word
    with pytest.raises(ValueError):
        viz.attribution_html(["a"], [1.0, 2.0])


def test_cli_attention_and_importance(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path / "home"))
    folder = save_tiny(tmp_path / "m", "bert")
    assert main(["attention", str(folder), "--text", "a good film .", "--layer", "1", "--head", "2",
                 "--html", str(tmp_path / "h.html"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == ["[CLS]", "a", "good", "film", ".", "[SEP]"]
    assert len(out["head"]["weights"]) == 6 and (tmp_path / "h.html").exists()
    assert sum(out["rollout_cls"]) == pytest.approx(1.0, abs=1e-3)
    assert main(["importance", str(folder), "--method", "all", "--limit", "12", "--json", "--top", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == {"gradient", "ablation", "captum"} and out["n"] == 12
    assert len(out["methods"]["gradient"]["top"]) == 3
    assert out["spearman"]["gradient"]["gradient"] == pytest.approx(1.0)
    assert main(["attention", str(folder), "--text", "x", "--layer", "9", "--head", "0"]) == 2
    assert "no head" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_long_text_is_cut_and_says_so(arch, tokenizer):
    from axlab.core.measure import MAX_LENGTH
    model = tiny_model(arch)
    long_text = " ".join(["the plot was not very good ."] * 100)             # ~700 tokens
    res = attention_for(model, tokenizer, [long_text, "a short one ."])
    assert len(res.tokens[0]) == MAX_LENGTH and res.truncated(0)
    assert res.n_input_tokens[0] > 600 and not res.truncated(1)
    assert res.n_input_tokens[1] == len(res.tokens[1])
    first = res.first_tokens(10)
    assert [len(t) for t in first.tokens] == [10, len(res.tokens[1])]     # a shorter text keeps all it has
    assert first.weights[0][0].shape == (res.n_heads, 10, 10)
    np.testing.assert_array_equal(first.weights[0][1], res.weights[0][1][:, :10, :10])
    assert res.weights[0][0].shape[-1] == MAX_LENGTH                          # the original is untouched
    with pytest.raises(AxlabError):
        res.first_tokens(0)
    fig = viz.head_heatmap(res, 0, 0)
    assert fig.layout.xaxis.tickfont.size < 12                                # many tokens: a smaller font


def test_attribution_colours_have_a_legend():
    html = viz.attribution_html(["good", "bad"], [0.5, -0.2])
    assert "pushes toward" in html and "pushes away" in html
    assert "pushes toward" not in viz.attribution_html(["good"], [0.5], legend=False)
    assert "<b>fresh</b>" in viz.attribution_html(["good"], [0.5], legend="fresh")
