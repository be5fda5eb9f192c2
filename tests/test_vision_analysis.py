"""Every "look inside" view on images: patch heatmaps, rollout, mean attention distance in
pixels, head importance and pixel attributions, on tiny random ViT / DeiT / DINOv2."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from axlab.analysis import importance, vision, viz
from axlab.analysis.attention_maps import ImageAttentionResult, attention_for, rollout, rollout_map
from axlab.analysis.attributions import compare_attributions, pixel_attributions, token_attributions
from axlab.analysis.head_stats import IMAGE_STATISTICS, head_statistics, mean_attention_distance
from axlab.analysis.importance import gradient_importance, head_ablation, head_importance
from axlab.compress.prune import prune_heads
from axlab.core import registry
from axlab.core.errors import AxlabError
from axlab.core.images import ImageSplit
from axlab.core.measure import encode, evaluate
from axlab.core.testing import VISION_ARCHS, tiny_vision_model
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = (4, 4)            # 28 px images, 7 px patches
PATCH = (7, 7)


@pytest.fixture(params=VISION_ARCHS)
def varch(request):
    return request.param


@pytest.fixture(scope="module")
def processor():
    from transformers import ViTImageProcessor
    return ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5])


@pytest.fixture(scope="module")
def images():
    """Digit-like uint8 images: a bright stroke on black at a different place in each."""
    rng = np.random.default_rng(0)
    out = np.zeros((6, 28, 28), dtype=np.uint8)
    for i in range(6):
        r, c = 3 + 3 * i, 4 + 2 * i
        out[i, r:r + 4, 4:24] = 255
        out[i, 4:24, c:c + 3] = 200
        out[i] = np.maximum(out[i], rng.integers(0, 30, (28, 28)).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def image_split(images):
    return ImageSplit(images, [0, 1, 2, 0, 1, 2], ["zero", "one", "two"])


def _n_prefix(arch: str) -> int:
    return 2 if arch == "deit" else 1


def _stock_attentions(model, processor, images) -> list[np.ndarray]:
    """transformers' own eager attention weights, (B, H, T, T) per layer."""
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("eager")
    with torch.no_grad():
        out = stock(pixel_values=encode(processor, list(images))["pixel_values"], output_attentions=True)
    return [a.double().numpy() for a in out.attentions]


def _hand_rollout(layers: list[np.ndarray], reduce: str = "mean") -> np.ndarray:
    """Abnar & Zuidema written out: per layer fuse heads, add I, renormalise rows; multiply up."""
    t = layers[0].shape[-1]
    r = np.eye(t)
    for w in layers:                                                   # w: (H, T, T) heads present
        fused = w.mean(0) if reduce == "mean" else w.max(0)
        a = 0.5 * fused + 0.5 * np.eye(t)
        a = a / a.sum(-1, keepdims=True)
        r = a @ r
    return r


# ---------------------------------------------------------------------------------------
# per-head patch maps
# ---------------------------------------------------------------------------------------

def test_patch_maps_are_the_cls_row_on_the_patch_grid(varch, processor, images):
    model = tiny_vision_model(varch)
    res = attention_for(model, processor, images[:3])
    assert isinstance(res, ImageAttentionResult) and len(res) == 3
    p = _n_prefix(varch)
    assert res.n_prefix == p and res.grid == GRID and res.patch == PATCH and res.input_size == (28, 28)
    assert res.tokens[0][:p] == (["[CLS]", "[DIST]"] if varch == "deit" else ["[CLS]"])
    assert res.tokens[0][p] == "p(0,0)" and len(res.tokens[0]) == p + 16
    ref = _stock_attentions(model, processor, images[:3])
    for i, layer, head in itertools.product(range(3), range(2), range(4)):
        m = res.patch_map(layer, head, i)
        assert m.shape == GRID
        np.testing.assert_allclose(m, ref[layer][i, head, 0, p:].reshape(GRID), atol=1e-5)
        # a chosen query patch: row p + r * cols + c
        q = res.patch_map(layer, head, i, query=(1, 2))
        np.testing.assert_allclose(q, ref[layer][i, head, p + 6, p:].reshape(GRID), atol=1e-5)
        assert res.prefix_share(layer, head, i) + m.sum() == pytest.approx(1.0, abs=1e-5)
    assert res.layer_maps(1, 2).shape == (4, *GRID)
    with pytest.raises(AxlabError, match="no patch"):
        res.patch_map(0, 0, 0, query=(4, 0))


def test_one_image_and_other_patch_sizes(processor, images):
    one = attention_for(tiny_vision_model("vit"), processor, images[0])           # a single (H, W) image
    assert len(one) == 1 and one.grid == GRID
    fine = attention_for(tiny_vision_model("vit", patch_size=4), processor, images[:2])
    assert fine.grid == (7, 7) and fine.patch_map(0, 0, 1).shape == (7, 7) and len(fine.tokens[0]) == 50
    colour = np.repeat(images[1][:, :, None], 3, axis=-1)                          # an (H, W, 3) image
    assert len(attention_for(tiny_vision_model("vit"), processor, colour)) == 1


def test_prefix_tokens_come_from_the_embeddings(varch):
    model = tiny_vision_model(varch)
    assert len(vision.prefix_tokens(model)) == _n_prefix(varch)
    emb = registry.base_model(model).embeddings
    emb.register_tokens = nn.Parameter(torch.zeros(1, 3, 32))                      # as DINOv2-with-registers
    assert vision.prefix_tokens(model)[-3:] == ["[REG0]", "[REG1]", "[REG2]"]
    with pytest.raises(AxlabError, match="prefix token"):
        vision.check_tokens(model, 17, GRID)


# ---------------------------------------------------------------------------------------
# rollout
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_rollout_equals_the_hand_computed_rollout(varch, processor, images, reduce):
    model = tiny_vision_model(varch, layers=2)
    res = attention_for(model, processor, images[:2])
    ref = _stock_attentions(model, processor, images[:2])
    p = _n_prefix(varch)
    for i in range(2):
        r = rollout(res, i, head_reduce=reduce)
        np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
        hand = _hand_rollout([ref[0][i], ref[1][i]], reduce)
        np.testing.assert_allclose(r, hand, atol=1e-5)
        m = rollout_map(res, i, head_reduce=reduce)
        assert m.shape == GRID
        np.testing.assert_allclose(m, hand[0, p:].reshape(GRID), atol=1e-5)
    assert not np.allclose(rollout(res, 0, head_reduce="mean"), rollout(res, 0, head_reduce="max"))


def test_rollout_respects_pruned_and_gated_heads(varch, processor, images):
    model = tiny_vision_model(varch)
    heads = {0: [1, 3], 1: [0, 1, 2, 3]}                        # layer 1 loses every head
    pruned = prune_heads(model, heads)
    res = attention_for(pruned, processor, images[:2])
    assert res.head_ids == [[0, 2], []]
    assert np.isnan(res.layer_maps(0, 0)[[1, 3]]).all() and np.isnan(res.layer_maps(1, 0)).all()
    with pytest.raises(AxlabError, match="removed"):
        res.patch_map(0, 1)
    ref = _stock_attentions(pruned, processor, images[:2])      # layer 0: the two heads left; layer 1: none
    assert ref[0].shape[1] == 2
    for i in range(2):
        r = rollout(res, i)
        np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
        t = r.shape[0]
        hand = _hand_rollout([ref[0][i]]) @ np.eye(t)             # the empty layer passes its input through
        np.testing.assert_allclose(r, hand, atol=1e-5)
    # the gated model is the pruned model: same maps, same rollout
    gates = torch.ones(2, 4)
    for layer, hs in heads.items():
        gates[layer, hs] = 0
    gated = attention_for(model, processor, images[:2], gates=gates)
    assert gated.head_ids == [[0, 2], []]
    for i in range(2):
        np.testing.assert_allclose(gated.weights[i][0][[0, 2]], res.weights[i][0][[0, 2]], atol=1e-5)
        np.testing.assert_allclose(rollout(gated, i), rollout(res, i), atol=1e-5)
    assert not np.allclose(rollout(attention_for(model, processor, images[:1]), 0), rollout(res, 0), atol=1e-4)


# ---------------------------------------------------------------------------------------
# mean attention distance (pixels)
# ---------------------------------------------------------------------------------------

def _centres():
    return [((r + 0.5) * 7, (c + 0.5) * 7) for r in range(4) for c in range(4)]


def test_mean_attention_distance_on_synthetic_patterns():
    n, p = 16, 1
    t = n + p
    cen = _centres()
    d = [[np.hypot(a[0] - b[0], a[1] - b[1]) for b in cen] for a in cen]
    # all attention on self -> 0 px
    own = np.zeros((t, t))
    own[np.arange(t), np.arange(t)] = 1.0
    assert mean_attention_distance(own, GRID, PATCH, p) == pytest.approx(0.0)
    # uniform over every token -> the mean distance between two patch centres
    uniform = np.full((t, t), 1.0 / t)
    expected = sum(sum(row) for row in d) / (n * n)
    assert mean_attention_distance(uniform, GRID, PATCH, p) == pytest.approx(expected)
    assert 12.0 < expected < 15.0                                       # about 13.7 px on a 4 x 4 grid of 7 px
    # every patch looks at patch (0, 0) -> the mean distance to its centre
    corner = np.zeros((t, t))
    corner[:, p] = 1.0
    assert mean_attention_distance(corner, GRID, PATCH, p) == pytest.approx(sum(row[0] for row in d) / n)
    # half of the mass on [CLS]: renormalised it is the same; not renormalised it halves
    half = corner * 0.5
    half[:, 0] = 0.5
    assert mean_attention_distance(half, GRID, PATCH, p) == pytest.approx(sum(row[0] for row in d) / n)
    assert mean_attention_distance(half, GRID, PATCH, p, renormalise=False) == pytest.approx(
        sum(row[0] for row in d) / (2 * n))
    # right-hand neighbour (wrapping to the row start) in rectangular patches
    right = np.zeros((t, t))
    for q in range(n):
        r, c = divmod(q, 4)
        right[p + q, p + r * 4 + (c + 1) % 4] = 1.0
    assert mean_attention_distance(right, GRID, (5, 7), p) == pytest.approx((3 * 7 + 21) / 4)
    # batched (L, H, T, T)
    stacked = np.stack([np.stack([own, uniform]), np.stack([corner, half])])
    np.testing.assert_allclose(mean_attention_distance(stacked, GRID, PATCH, p),
                               [[0.0, expected], [sum(row[0] for row in d) / n] * 2])


def _uniform_attention(model):
    """q = k = 0 in every layer: every query attends uniformly to every token."""
    with torch.no_grad():
        for layer in range(len(registry.layers(model))):
            parts = registry.attention_parts(model, layer)
            for lin in (parts.q, parts.k):
                lin.weight.zero_()
                lin.bias.zero_()
    return model


def test_head_statistics_in_pixels(varch, processor, image_split):
    model = _uniform_attention(tiny_vision_model(varch))
    p = _n_prefix(varch)
    t = 16 + p
    stats = head_statistics(model, processor, image_split, cache_results=False, progress=False)
    assert set(stats) == set(IMAGE_STATISTICS)
    cen = _centres()
    expected = np.mean([np.hypot(a[0] - b[0], a[1] - b[1]) for a in cen for b in cen])
    np.testing.assert_allclose(stats["mean_distance"], expected, rtol=1e-6)
    np.testing.assert_allclose(stats["entropy"], np.log(t), rtol=1e-6)
    np.testing.assert_allclose(stats["prefix_share"], p / t, rtol=1e-6)


def test_head_statistics_agree_with_the_maps_and_skip_removed_heads(varch, processor, image_split):
    model = prune_heads(tiny_vision_model(varch), {0: [2], 1: [0, 1, 2, 3]})
    stats = head_statistics(model, processor, image_split, batch_size=4, cache_results=False, progress=False)
    res = attention_for(model, processor, image_split.images)
    per_image = np.stack([mean_attention_distance(res.stack(i), res.grid, res.patch, res.n_prefix)
                          for i in range(len(res))])                        # (N, L, H)
    np.testing.assert_allclose(stats["mean_distance"], per_image.mean(0), rtol=1e-5)
    assert np.isnan(stats["mean_distance"][0, 2]) and np.isnan(stats["mean_distance"][1]).all()
    assert np.isfinite(stats["mean_distance"][0, [0, 1, 3]]).all()
    fig = viz.attention_distance_figure(stats)
    assert isinstance(fig, go.Figure) and len(fig.data[0].x) == 3            # one dot per head left
    assert list(fig.data[0].x) == [0, 0, 0]
    figs = viz.statistics_figures(stats)
    assert "distance_by_depth" in figs and "pixels" in figs["mean_distance"].layout.title.text


def test_head_statistics_on_images_are_cached(processor, image_split, tmp_path, monkeypatch):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    model = tiny_vision_model("vit")
    first = head_statistics(model, processor, image_split, progress=False)
    from axlab.analysis import head_stats
    monkeypatch.setattr(head_stats, "_compute_images", lambda *a, **k: pytest.fail("not cached"))
    again = head_statistics(model, processor, image_split, progress=False)
    np.testing.assert_array_equal(first["mean_distance"], again["mean_distance"])


# ---------------------------------------------------------------------------------------
# head importance on image splits
# ---------------------------------------------------------------------------------------

def _sharpen(model, factor=30.0):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "classifier" in name and p.dim() == 2:
                p.mul_(factor)
    return model


def test_head_importance_works_on_image_splits(processor, image_split, tmp_path, monkeypatch):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    model = _sharpen(tiny_vision_model("vit"))
    res = head_ablation(model, processor, image_split, progress=False, cache_results=False)
    base = evaluate(model, processor, image_split, progress=False)
    assert res.base_loss == pytest.approx(base["loss"], abs=1e-5)
    for layer, head in [(0, 1), (1, 3)]:
        ev = evaluate(prune_heads(model, {layer: [head]}), processor, image_split, progress=False)
        assert float(res.loss[layer, head]) == pytest.approx(ev["loss"], abs=1e-5)
    grad = gradient_importance(model, processor, image_split, progress=False)
    assert torch.isfinite(grad).all() and grad.abs().max() > 1e-5
    # through the cached entry point, twice: the second call must not recompute
    calls = []
    real = importance.METHODS["gradient"]
    monkeypatch.setitem(importance.METHODS, "gradient", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = head_importance(model, processor, image_split, progress=False)
    again = head_importance(model, processor, image_split, progress=False)
    assert len(calls) == 1 and torch.equal(first, again)
    torch.testing.assert_close(first, grad)
    head_importance(model, processor, image_split.head(3), progress=False)        # other images: recomputed
    assert len(calls) == 2
    pruned = prune_heads(model, {0: [2]})
    abl = head_importance(pruned, processor, image_split, method="ablation", progress=False)
    assert torch.isnan(abl[0, 2]) and torch.isfinite(abl[1]).all()


# ---------------------------------------------------------------------------------------
# pixel attributions
# ---------------------------------------------------------------------------------------

def _trained_looking(model):
    """Random [CLS] / distillation / position embeddings, as a trained model has. DeiT's random
    init leaves them at 0, so an all-zero input makes every token 0 and LayerNorm jumps there
    (the model is not differentiable at the "zero" baseline)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in registry.base_model(model).embeddings.named_parameters():
            if name in ("cls_token", "distillation_token", "position_embeddings"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def test_integrated_gradients_are_complete(varch, processor, images):
    model = _sharpen(_trained_looking(tiny_vision_model(varch)), 10.0)
    for baseline in ("black", "zero"):
        # explain the class whose probability moves most between baseline and image
        probe = [pixel_attributions(model, processor, images[2], t, method="integrated_gradients",
                                    baseline=baseline, n_steps=2) for t in range(3)]
        target = int(np.argmax([abs(a.output - a.baseline_output) for a in probe]))
        a = pixel_attributions(model, processor, images[2], target, method="integrated_gradients",
                               baseline=baseline, n_steps=64)
        assert a.method == "integrated_gradients" and a.baseline == baseline
        assert a.scores.shape == (1, 28, 28) and a.saliency.shape == (28, 28)
        gap = a.output - a.baseline_output
        assert abs(gap) > 1e-3                                        # the check below is not about zeros
        assert a.saliency.sum() == pytest.approx(gap, abs=max(2e-3, 0.02 * abs(gap)))
        assert abs(a.delta) < max(2e-3, 0.02 * abs(gap))
        # the baseline's output is f at that baseline
        pixels = encode(processor, [np.zeros_like(images[2])])["pixel_values"]
        if baseline == "zero":
            pixels = torch.zeros_like(pixels)
        else:
            assert torch.all(pixels == -1.0)                          # black under mean 0.5, std 0.5
        with torch.no_grad():
            p = torch.softmax(model(pixel_values=pixels).logits, -1)[0, a.target]
        assert a.baseline_output == pytest.approx(float(p), abs=1e-6)
    # the text entry point dispatches on the model's modality
    same = token_attributions(model, processor, images[2], method="integrated_gradients", n_steps=64)
    np.testing.assert_allclose(same.saliency, pixel_attributions(model, processor, images[2],
                                                                 method="integrated_gradients",
                                                                 n_steps=64).saliency, atol=1e-9)


def test_colour_models_sum_integrated_gradients_over_channels(images):
    from transformers import ViTImageProcessor
    rgb = ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model = _sharpen(tiny_vision_model("vit", channels=3), 10.0)
    colour = np.stack([images[1], images[3], images[5]], axis=-1)                  # (28, 28, 3)
    probe = [pixel_attributions(model, rgb, colour, t, n_steps=2) for t in range(3)]
    target = int(np.argmax([abs(a.output - a.baseline_output) for a in probe]))
    a = pixel_attributions(model, rgb, colour, target, n_steps=64)
    gap = a.output - a.baseline_output
    assert a.scores.shape == (3, 28, 28) and abs(gap) > 1e-3
    np.testing.assert_allclose(a.saliency, a.scores.sum(0))
    assert a.saliency.sum() == pytest.approx(gap, abs=max(2e-3, 0.02 * abs(gap)))
    occ = pixel_attributions(model, rgb, colour, target, method="occlusion")
    np.testing.assert_allclose(occ.saliency, occ.scores[0])                        # every channel holds the window's value
    assert _types(viz.pixel_attribution_figure(a)) == ["image", "heatmap"]


class _OnlyRegion(nn.Module):
    """A classifier that sees only rows 7..13 x columns 14..20 (one patch); the rest is black."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config
        mask = torch.zeros(1, 1, 28, 28)
        mask[..., 7:14, 14:21] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, pixel_values, **kw):
        return self.inner(pixel_values=pixel_values * self.mask - (1 - self.mask), **kw)


def test_occlusion_lights_the_region_the_model_looks_at(processor, images):
    model = _OnlyRegion(_sharpen(tiny_vision_model("vit"), 10.0))
    img = np.full((28, 28), 255, dtype=np.uint8)
    occ = pixel_attributions(model, processor, img, method="occlusion")
    assert occ.method == "occlusion" and occ.window == PATCH and np.isnan(occ.delta)
    region = np.zeros((28, 28), dtype=bool)
    region[7:14, 14:21] = True
    assert np.all(occ.saliency[~region] == 0.0)
    assert np.all(np.abs(occ.saliency[region]) > 1e-6)
    np.testing.assert_allclose(occ.saliency[region], occ.saliency[7, 14])   # one window, one value
    assert occ.saliency[7, 14] == pytest.approx(occ.output - occ.baseline_output, abs=1e-6)
    ig = pixel_attributions(model, processor, img, method="integrated_gradients")
    assert np.all(ig.saliency[~region] == 0.0) and np.abs(ig.saliency[region]).sum() > 1e-6
    small = pixel_attributions(model, processor, img, method="occlusion", window=4)
    touched = np.zeros((28, 28), dtype=bool)                  # the 4 x 4 windows that overlap the region
    touched[4:16, 12:24] = True
    assert small.window == (4, 4) and np.all(small.saliency[~touched] == 0.0)
    assert np.abs(small.saliency[region]).min() > 1e-6


def test_bad_attribution_inputs_are_explained(processor, images):
    model = tiny_vision_model("vit")
    with pytest.raises(AxlabError, match="baseline"):
        pixel_attributions(model, processor, images[0], baseline="white")
    with pytest.raises(AxlabError, match="does not exist"):
        pixel_attributions(model, processor, images[0], target=7)
    with pytest.raises(AxlabError, match="one image at a time"):
        pixel_attributions(model, processor, images[:2])


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------

def _types(fig):
    return [tr.type for tr in fig.data]


def test_figures_are_overlays_on_the_image(varch, processor, images):
    model = tiny_vision_model(varch)
    res = attention_for(model, processor, images[:2])
    one = viz.patch_attention_figure(res, 1, 2, 1, query=(2, 1))
    assert isinstance(one, go.Figure) and _types(one) == ["image", "heatmap"]
    assert np.asarray(one.data[1].z).shape == GRID and len(one.layout.shapes) == 1     # the query patch
    np.testing.assert_allclose(np.asarray(one.data[1].z), res.patch_map(1, 2, 1, (2, 1)))
    assert np.asarray(one.data[0].z).shape == (28, 28, 3)
    assert _types(viz.head_heatmap(res, 0, 0)) == ["image", "heatmap"]              # same call as for text
    grid = viz.layer_heads_figure(res, 0)
    assert _types(grid) == ["image", "heatmap"] * 4
    roll = viz.rollout_figure(res, 1)
    assert _types(roll) == ["image", "heatmap"]
    np.testing.assert_allclose(np.asarray(roll.data[1].z), rollout_map(res, 1))
    assert _types(viz.rollout_overlay(res, 0, head_reduce="max")) == ["image", "heatmap"]
    pruned = attention_for(prune_heads(model, {0: [1]}), processor, images[:1])
    facets = viz.layer_heads_figure(pruned, 0)
    assert _types(facets) == ["image", "heatmap", "image", "image", "heatmap", "image", "heatmap"]
    assert "removed" in facets.layout.annotations[1].text
    attr = pixel_attributions(model, processor, images[0], n_steps=8)
    fig = viz.pixel_attribution_figure(attr)
    assert _types(fig) == ["image", "heatmap"]
    heat = fig.data[1]
    assert heat.zmid == 0.0 and heat.zmin == -heat.zmax and heat.colorbar.title.text
    both = compare_attributions({"base": model, "pruned": prune_heads(model, {0: [1]})}, processor, images[0],
                                n_steps=8)
    cmp = viz.pixel_attribution_compare(both)
    assert _types(cmp) == ["image", "heatmap"] * 2 and cmp.layout.coloraxis.cmid == 0.0


def test_overlay_cells_cover_their_pixels():
    img = np.zeros((56, 56), dtype=np.uint8)                       # the image is drawn larger than the model input
    fig = viz.image_overlay(img, np.arange(16.0).reshape(4, 4))
    heat = fig.data[1]
    assert heat.dx == 14 and heat.dy == 14 and heat.x0 == pytest.approx(6.5)     # cell 0 spans pixels 0..13
    assert vision.upsample(np.arange(4.0).reshape(2, 2), (4, 4)).tolist()[0] == [0, 0, 1, 1]


def test_text_attention_is_unchanged_and_takes_gates(tokenizer):
    from axlab.core.testing import tiny_model
    model = tiny_model("bert")
    res = attention_for(model, tokenizer, "a good film")
    assert not isinstance(res, ImageAttentionResult) and res.head_ids == [[0, 1, 2, 3]] * 2
    gates = torch.ones(2, 4)
    gates[0, 1] = 0
    gated = attention_for(model, tokenizer, "a good film", gates=gates)
    pruned = attention_for(prune_heads(model, {0: [1]}), tokenizer, "a good film")
    assert gated.head_ids == pruned.head_ids == [[0, 2, 3], [0, 1, 2, 3]]
    np.testing.assert_allclose(gated.stack(0), pruned.stack(0), atol=1e-5)
    np.testing.assert_allclose(rollout(gated), rollout(pruned), atol=1e-5)
