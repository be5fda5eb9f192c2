"""Image classifiers reach the deployed files: folder + processor, ONNX with checked parity, int8, report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from axlab.compress.prune import prune_ffn, prune_heads
from axlab.core.images import ImageSplit, ImageSplits
from axlab.core.measure import encode, evaluate, forward
from axlab.core.testing import VISION_ARCHS, tiny_vision_model


def _processor():
    from transformers import ViTImageProcessor
    return ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5], image_std=[0.5])


def _labelled(model, n: int = 24, seed: int = 0) -> ImageSplit:
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    images = (np.random.default_rng(seed).random((n, 28, 28)) * 255).astype(np.uint8)
    return ImageSplit(images, [i % len(names) for i in range(n)], names)


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_plain_onnx_export_of_a_pruned_image_model_matches_pytorch(arch, tmp_path):
    from axlab.deploy.export import export_onnx_graph
    model = tiny_vision_model(arch, num_labels=3, layers=2, heads=4)
    pruned = prune_ffn(prune_heads(model, {0: [1, 2], 1: [0]}), {1: list(range(0, 64, 3))})
    proc = _processor()
    res = export_onnx_graph(pruned, proc, tmp_path / "m.onnx", int8=True)
    assert res.graph == "plain" and "not" in (res.fallback_reason or "")          # the fused writer is text-only
    assert res.parity_max_abs_diff <= 1e-4 and set(res.parity) == {"1x1x28x28", "2x1x28x28", "5x1x28x28"}
    images = (np.random.default_rng(1).random((7, 28, 28)) * 255).astype(np.uint8)
    batch = encode(proc, list(images))
    with torch.inference_mode():
        ref = forward(pruned, batch).logits
    assert torch.allclose(res.predictor(batch), ref, atol=1e-4)                  # a batch size it never saw
    assert res.int8_size_bytes < res.size_bytes and res.int8_predictor(batch).shape == ref.shape


def test_export_all_writes_folder_processor_onnx_and_report_for_an_image_variant(tmp_path):
    from axlab.core.loading import load_variant
    from axlab.deploy.export import export_all
    model = tiny_vision_model("vit", num_labels=3)
    model.config.id2label = {0: "cat", 1: "dog", 2: "fox"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    proc = _processor()
    variant = prune_heads(model, {1: [0, 3]})
    split = _labelled(model)
    splits = ImageSplits("tiny-images", split.label_names, split, split, split, 0, "0" * 16, "none")
    res = export_all(variant, proc, tmp_path / "out", recipe=[{"op": "prune_heads", "params": {"heads": {1: [0, 3]}}}],
                     base="tiny", name="heads-2", dataset="tiny-images", onnx=True, int8=True, splits=splits,
                     limit=12, progress=False)
    files = set(res.files)
    assert "preprocessor_config.json" in files and any(f.endswith(".onnx") for f in files)
    assert res.onnx.parity_max_abs_diff <= 1e-4
    assert res.measurements["onnx"]["accuracy"] == pytest.approx(evaluate(variant, proc, split.head(12))["accuracy"])
    assert res.measurements["onnx"]["n"] == 12 and res.measurements["onnx_int8"]["size_bytes"] > 0
    assert res.report and all(p for p in res.report.values())
    back = load_variant(res.folder)
    batch = encode(back.processor, list(split.images[:5]))
    with torch.inference_mode():
        assert torch.allclose(forward(back.model, batch).logits, forward(variant, batch).logits, atol=1e-5)
