"""Self-distillation (SDViT) and early exits, on tiny models (text and vision).

* the head path (registry.head_logits) on the last block's output is the model's own logits,
  for every architecture;
* self_distill returns a new model (same parameters, input untouched) whose intermediate
  blocks classify better through the head than before, on small tasks that need depth
  (vision: an XOR of two image regions, against a plain fine-tune of equal budget); on text
  its exits move toward the final prediction (KL) where accuracy is already saturated;
* the recipe op replays the direct call and reads in words; the bench script runs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from axlab.analysis.early_exit import early_exit_accuracy, exit_logits
from axlab.compress.distill import self_distill
from axlab.core import registry
from axlab.core.data import Split
from axlab.core.images import ImageSplit
from axlab.core.testing import ARCHS, VISION_ARCHS, tiny_model, tiny_pixels, tiny_tokenizer, tiny_vision_model

ROOT = Path(__file__).resolve().parents[1]


def _label(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    return model


def xor_images(n: int, seed: int) -> ImageSplit:
    """28x28 grey noise; a bright top-left and/or bottom-right quadrant; label = exactly one of them is bright."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    im = rng.normal(80, 30, (n, 28, 28))
    im[:, :14, :14] += 100 * a[:, None, None]
    im[:, 14:, 14:] += 100 * b[:, None, None]
    return ImageSplit(im.clip(0, 255).astype(np.uint8), (a ^ b).tolist(), ["same", "diff"])


def image_processor():
    from transformers import ViTImageProcessor
    return ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5])


# ----------------------------------------------------------------------------- head path

@pytest.mark.parametrize("arch", ARCHS)
def test_head_path_on_the_last_block_is_the_models_logits_text(arch):
    tok = tiny_tokenizer()
    model = tiny_model(arch, num_labels=3, layers=3)
    batch = dict(tok(["a short one", "a somewhat longer sentence with more words ."], padding=True,
                     return_tensors="pt"))
    exits = exit_logits(model, batch)
    with torch.inference_mode():
        ref = model(**batch).logits
    assert len(exits) == 3
    torch.testing.assert_close(exits[-1], ref, atol=1e-5, rtol=0)
    assert (exits[0] - ref).abs().max() > 1e-5        # an earlier block is a different exit


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_head_path_on_the_last_block_is_the_models_logits_vision(arch):
    model = tiny_vision_model(arch, num_labels=3, layers=3)
    batch = {"pixel_values": tiny_pixels(5)}
    exits = exit_logits(model, batch)
    with torch.inference_mode():
        ref = model(**batch).logits
    assert len(exits) == 3
    torch.testing.assert_close(exits[-1], ref, atol=1e-5, rtol=0)
    assert (exits[0] - ref).abs().max() > 1e-5


def test_head_path_of_deit_with_teacher_averages_its_two_heads():
    from transformers import AutoConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("deit", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, image_size=28, patch_size=7, num_channels=1, num_labels=3)
    model = DeiTForImageClassificationWithTeacher(cfg).eval()
    batch = {"pixel_values": tiny_pixels(3)}
    with torch.inference_mode():
        ref = model(**batch).logits
    torch.testing.assert_close(exit_logits(model, batch)[-1], ref, atol=1e-5, rtol=0)


def test_head_path_reads_a_truncated_model_exactly():
    """Dropping the blocks after k makes the model's logits exactly block k's exit."""
    from axlab.compress.prune import drop_layers
    model = tiny_vision_model("vit", num_labels=3, layers=4)
    batch = {"pixel_values": tiny_pixels(4)}
    exits = exit_logits(model, batch)
    cut = drop_layers(model, [2, 3])
    with torch.inference_mode():
        torch.testing.assert_close(cut(**batch).logits, exits[1], atol=1e-5, rtol=0)
    ee = early_exit_accuracy(cut, image_processor(), xor_images(16, 0), progress=False)
    assert ee["skipped"] == [3, 4] and ee["accuracy"][1:] == [ee["accuracy"][1]] * 3


# ----------------------------------------------------------------------------- self-distillation

def _vision_base():
    model = _label(tiny_vision_model("vit", num_labels=2, layers=4), ["same", "diff"])
    proc = image_processor()
    # the "fine-tuned model": plain cross-entropy on the labels (alpha=0 is plain fine-tuning)
    base = self_distill(model, proc, xor_images(1024, 0), steps=80, lr=1e-3, alpha=0.0, seed=0, progress=False)
    return base, proc


@pytest.fixture(scope="module")
def vision_base():
    return _vision_base()


def test_self_distill_returns_a_new_model_and_leaves_its_input_alone(vision_base):
    base, proc = vision_base
    before = {k: v.clone() for k, v in base.state_dict().items()}
    out = self_distill(base, proc, xor_images(64, 3), steps=3, lr=1e-3, batch_size=16, seed=0, progress=False)
    assert out is not base
    assert sum(p.numel() for p in out.parameters()) == sum(p.numel() for p in base.parameters())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    assert out.axlab_recipe[-1]["op"] == "self_distill"
    stats = out.axlab_self_distill_stats
    assert stats["steps"] == 3 and len(stats["log"]) == 3
    assert all(1 <= h["block"] <= 3 for h in stats["log"])          # only intermediate blocks are drawn


def test_self_distill_lifts_the_intermediate_exits_images(vision_base):
    base, proc = vision_base
    test = xor_images(400, 1)
    train = xor_images(1024, 2)
    before = early_exit_accuracy(base, proc, test, progress=False)["accuracy"]
    sd = self_distill(base, proc, train, steps=40, lr=5e-4, alpha=1.0, seed=1, progress=False)
    ce = self_distill(base, proc, train, steps=40, lr=5e-4, alpha=0.0, seed=1, progress=False)   # same budget
    after = early_exit_accuracy(sd, proc, test, progress=False)["accuracy"]
    control = early_exit_accuracy(ce, proc, test, progress=False)["accuracy"]
    mid = slice(0, 3)
    # the task needs depth: the plain fine-tuned model's early exits are poor, its last is good
    assert np.mean(before[mid]) < 0.85 and before[-1] > 0.9
    assert np.mean(after[mid]) > np.mean(before[mid]) + 0.1
    assert np.mean(after[mid]) > np.mean(control[mid]) + 0.05          # not just more training
    assert after[-1] >= before[-1] - 0.05                                # the last exit keeps its accuracy


def sentiment_texts(n: int, seed: int) -> Split:
    """Filler sentences with one sentiment word; label = which kind of word."""
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "was", "plot", "a", "story", "actor", "scene"]
    pos, neg = ["good", "great", "fun"], ["bad", "awful", "boring"]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(filler, int(rng.integers(3, 8)))) + [str(rng.choice(pos if y else neg))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return Split(texts, labels, ["neg", "pos"])


def _exit_gap(model, tok, split) -> list[float]:
    """Mean KL(final || exit) per intermediate block: how far each exit is from the model's prediction."""
    from axlab.core.measure import encode
    exits = exit_logits(model, encode(tok, split.texts))
    final = exits[-1].log_softmax(-1)
    return [float((final.exp() * (final - e.log_softmax(-1))).sum(-1).mean()) for e in exits[:-1]]


def test_self_distill_pulls_the_intermediate_exits_toward_the_last_text():
    """Text: a tiny BERT fine-tuned on an easy task; SD brings every intermediate exit close to the final one."""
    tok = tiny_tokenizer()
    model = _label(tiny_model("bert", num_labels=2, layers=4, vocab_size=12000), ["neg", "pos"])   # ids < 12000
    base = self_distill(model, tok, sentiment_texts(1024, 0), steps=80, lr=1e-3, alpha=0.0, seed=0, progress=False)
    test = sentiment_texts(200, 1)
    before = early_exit_accuracy(base, tok, test, progress=False)["accuracy"]
    sd = self_distill(base, tok, sentiment_texts(512, 2), steps=30, lr=5e-4, alpha=1.0, seed=1, progress=False)
    ce = self_distill(base, tok, sentiment_texts(512, 2), steps=30, lr=5e-4, alpha=0.0, seed=1, progress=False)
    after = early_exit_accuracy(sd, tok, test, progress=False)["accuracy"]
    assert before[-1] > 0.9
    gap_before, gap_sd, gap_ce = (_exit_gap(m, tok, test) for m in (base, sd, ce))
    assert np.mean(gap_sd) < 0.5 * np.mean(gap_before)
    assert np.mean(gap_sd) < 0.5 * np.mean(gap_ce)                      # not just more training
    assert np.mean(after[:3]) >= np.mean(before[:3]) - 0.02 and after[-1] >= before[-1] - 0.02


def test_self_distill_refuses_a_single_block_and_validates_its_options(vision_base):
    from axlab.compress.prune import drop_layers
    from axlab.core.errors import AxlabError
    base, proc = vision_base
    one = drop_layers(base, [1, 2, 3])
    with pytest.raises(AxlabError, match="two kept blocks"):
        self_distill(one, proc, xor_images(32, 0), steps=1, progress=False)
    self_distill(one, proc, xor_images(32, 0), steps=1, alpha=0.0, batch_size=8, progress=False)   # plain fine-tune
    with pytest.raises(ValueError):
        self_distill(base, proc, xor_images(32, 0), steps=0, progress=False)


def test_self_distill_skips_dropped_blocks(vision_base):
    from axlab.compress.prune import drop_layers
    base, proc = vision_base
    cut = drop_layers(base, [1, 3])                                      # kept: blocks 1 and 3
    out = self_distill(cut, proc, xor_images(64, 0), steps=6, batch_size=8, seed=0, progress=False)
    assert {h["block"] for h in out.axlab_self_distill_stats["log"]} == {1}


# ----------------------------------------------------------------------------- recipe

def test_recipe_op_replays_the_direct_call_and_reads_in_words(vision_base):
    from axlab.compress import apply_recipe
    from axlab.core.images import ImageSplits
    from axlab.core.recipe import describe_recipe
    base, proc = vision_base
    train = xor_images(128, 5)
    base.axlab_recipe = []
    direct = self_distill(base, proc, train, steps=4, batch_size=16, lr=1e-3, seed=3, progress=False)
    splits = ImageSplits("xor", ["same", "diff"], train, xor_images(8, 6), xor_images(8, 7), 0, "", "")
    replay = apply_recipe(base, direct.axlab_recipe, tokenizer=proc, splits=splits)
    for (k, a), b in zip(direct.state_dict().items(), replay.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    assert describe_recipe(direct.axlab_recipe) == "self-distil the intermediate blocks toward the last (4 steps)"
    json.dumps(direct.axlab_recipe)


# ----------------------------------------------------------------------------- bench

@pytest.mark.slow
def test_bench_sdvit_quick_runs(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_sdvit.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "sdvit.json").read_text())
    for key in ("early_exit", "keep_first_k", "shifted"):
        assert key in res
    ee = res["early_exit"]
    assert len(ee["before"]["test"]["accuracy"]) == len(ee["after"]["test"]["accuracy"]) == res["model"]["layers"]
    assert (tmp_path / "sdvit.md").read_text().startswith("#")


def test_bench_vision_quick_runs(tmp_path):
    """bench_vision --quick on the default vision model: every row measured, ratios against the fastest peer."""
    from axlab.core.train_vision import prepare_vision
    prepare_vision()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_vision.py"), "--quick", "--out",
                           str(tmp_path / "vision")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "vision.json").read_text())
    rows = res["rows"]
    assert {"pytorch fp32", "pytorch int8", "onnxruntime fp32", "onnxruntime int8", "axlab AxFormer",
            "axlab GPFQ 4-bit", "axlab best combination"} <= set(rows)
    for name, r in rows.items():
        assert 0.5 < r["test_accuracy"] <= 1 and r["size_bytes"] > 0 and r["b1_ms"] > 0, name
    for bs in (1, 32):
        fastest = res["fastest_peer"][str(bs)] if str(bs) in res["fastest_peer"] else res["fastest_peer"][bs]
        assert rows[fastest][f"b{bs}_vs_fastest_peer"] == 1.0
    assert rows["axlab GPFQ 4-bit"]["size_bytes"] < rows["pytorch fp32"]["size_bytes"] / 3
    assert (tmp_path / "vision.md").read_text().startswith("Vision:")
