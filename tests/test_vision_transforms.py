"""Every transform runs on tiny ViT / DeiT / DINOv2 models with image splits: input untouched, replay == direct,
and the result measures sanely through the one measure path."""
import math

import pytest
import torch
from axlab.compress import apply_recipe, axformer, distill, gpfq, hard_attention, prune, quantize
from axlab.core import registry
from axlab.core.measure import evaluate, measure, predict_logits
from axlab.core.testing import VISION_ARCHS, tiny_image_processor, tiny_image_splits, tiny_vision_model


@pytest.fixture(scope="module")
def splits():
    return tiny_image_splits(24)


@pytest.fixture(scope="module")
def proc():
    return tiny_image_processor()


@pytest.fixture(params=VISION_ARCHS)
def vmodel(request):
    m = tiny_vision_model(request.param, heads=4, intermediate=64)
    m.config.id2label = {i: f"c{i}" for i in range(3)}
    m.config.label2id = {f"c{i}": i for i in range(3)}
    return m


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _unchanged(m, before):
    return all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and set(before) == set(m.state_dict())


def _sane(model, proc, split):
    ev = evaluate(model, proc, split)
    assert 0.0 <= ev["accuracy"] <= 1.0 and 0.0 <= ev["macro_f1"] <= 1.0 and math.isfinite(ev["loss"])
    assert ev["n"] == len(split) and ev["labels"] == ["c0", "c1", "c2"]
    return ev


TRANSFORMS = {
    "prune_heads": lambda m, p, s: prune.prune_heads(m, {0: [1], 1: [0, 2]}),
    "prune_ffn_magnitude": lambda m, p, s: prune.prune_ffn(m, prune.ffn_by_budget(m, 0.25)),
    "prune_ffn_activation": lambda m, p, s: prune.prune_ffn(m, prune.ffn_by_budget(m, 0.25, "activation", p, s.train)),
    "prune_ffn_gradient": lambda m, p, s: prune.prune_ffn(m, prune.ffn_by_budget(m, 0.25, "gradient", p, s.train)),
    "drop_layers": lambda m, p, s: prune.drop_layers(m, [1]),
    "unstructured_data": lambda m, p, s: prune.unstructured(m, 0.3, "data", tokenizer=p, splits=s),
    "hard_attention": lambda m, p, s: hard_attention.hard_attention(m, {0: 4, 1: 8}),
    "int8": lambda m, p, s: quantize.int8_dynamic(m),
    "rtn": lambda m, p, s: quantize.rtn(m, 4),
    "gpfq": lambda m, p, s: gpfq.gpfq(m, p, list(s.train.inputs[:16]), 4),
    "distill": lambda m, p, s: distill.distill(prune.prune_heads(m, {0: [1]}), m, p, s.train, steps=3, batch_size=8,
                                               hidden_weight=1.0),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_transform_runs_on_images_and_leaves_input_alone(vmodel, proc, splits, name, one_thread):
    before = _state(vmodel)
    out = TRANSFORMS[name](vmodel, proc, splits)
    assert out is not vmodel and _unchanged(vmodel, before)
    _sane(out, proc, splits.test)
    recipe = getattr(out, "axlab_recipe", None)
    if recipe:                                           # replaying the recorded recipe rebuilds the same model
        again = apply_recipe(vmodel, recipe, tokenizer=proc, splits=splits)
        torch.testing.assert_close(predict_logits(again, proc, splits.test.inputs),
                                   predict_logits(out, proc, splits.test.inputs), atol=1e-5, rtol=0)
        assert _unchanged(vmodel, before)


def test_int8_follows_fp32_on_images(vmodel, proc, splits, one_thread):
    q = quantize.int8_dynamic(vmodel)
    a, b = predict_logits(vmodel, proc, splits.test.inputs), predict_logits(q, proc, splits.test.inputs)
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max()) + 1e-3


def test_axformer_search_on_image_splits(vmodel, proc, splits, one_thread):
    before = _state(vmodel)
    res = axformer.search(vmodel, proc, splits, tolerance=0.5)
    assert _unchanged(vmodel, before)
    assert math.isfinite(res.base_loss) and math.isfinite(res.final_loss) and res.n_val == len(splits.validation)
    assert res.final_loss <= res.base_loss * 1.5 + 1e-6        # a change is kept only within the tolerance
    again = apply_recipe(vmodel, res.recipe, tokenizer=proc, splits=splits)
    torch.testing.assert_close(predict_logits(again, proc, splits.test.inputs),
                               predict_logits(res.model, proc, splits.test.inputs), atol=1e-5, rtol=0)
    # the search also takes a bare validation ImageSplit, and the cached path keys on image bytes
    assert axformer._split_hash(splits.validation) != axformer._split_hash(splits.test)
    assert axformer.search(vmodel, proc, splits.validation, tolerance=0.5).n_val == len(splits.validation)


def test_recipe_replay_with_data_steps_on_image_splits(vmodel, proc, splits, one_thread):
    recipe = [{"op": "prune_heads", "params": {"heads": {"0": [1]}}},
              {"op": "unstructured", "params": {"sparsity": 0.2, "criterion": "data", "n_calib": 16}},
              {"op": "quantize_gpfq", "params": {"bits": 4, "n_calibration": 16}}]
    before = _state(vmodel)
    a = apply_recipe(vmodel, recipe, tokenizer=proc, splits=splits)
    b = apply_recipe(vmodel, recipe, tokenizer=proc, splits=splits)
    assert _unchanged(vmodel, before)
    torch.testing.assert_close(predict_logits(a, proc, splits.test.inputs), predict_logits(b, proc, splits.test.inputs),
                               atol=1e-6, rtol=0)
    _sane(a, proc, splits.test)


def test_measure_record_on_images(vmodel, proc, splits, one_thread):
    m = measure(vmodel, proc, splits.test, split_name="test", with_latency=True, progress=False)
    d = m.to_dict()
    assert d["n"] == len(splits.test) and d["size_bytes"] > 0 and d["latency_b1_ms"] > 0
