"""Claims about the real default vision model (the MNIST ViT, built once by `axlab prepare`, then cached)."""
import json
import time

import numpy as np
import pytest
import torch
from axlab.cli import main
from axlab.core.train_vision import DEFAULT_VISION_CONFIG, default_vision_dir, pixels, prepare_vision

pytestmark = pytest.mark.slow


def test_card_folder_and_cache(default_vision_bundle):
    t0 = time.perf_counter()
    card = prepare_vision()                             # second call: from the cache
    assert card["cached"] is True and time.perf_counter() - t0 < 5
    assert card["test"]["accuracy"] >= 0.98 and card["validation"]["accuracy"] >= 0.98
    assert card["split_sizes"] == {"train": 50000, "validation": 10000, "test": 10000}
    assert len(card["data_sha256"]) == 64 and card["seed"] == 0 and card["train_seconds"] > 0
    assert card["train_config"] == json.loads(json.dumps(DEFAULT_VISION_CONFIG.__dict__))
    folder = default_vision_dir()
    assert json.loads((folder / "axlab_card.json").read_text())["test"] == card["test"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["ViTForImageClassification"]
    assert cfg["id2label"] == {str(i): str(i) for i in range(10)}
    assert (folder / "model.safetensors").exists() and (folder / "preprocessor_config.json").exists()
    b = default_vision_bundle
    assert b.labels == [str(d) for d in range(10)] and b.modality == "image" and b.source == "default-vision"
    assert b.info["test"] == card["test"]


def test_test_accuracy_through_the_library(default_vision_bundle, mnist_splits):
    from axlab.core.measure import evaluate
    ev = evaluate(default_vision_bundle.model, default_vision_bundle.processor, mnist_splits.test, batch_size=500,
                  progress=False)
    assert ev["accuracy"] >= 0.98 and ev["n"] == 10000


def test_plain_transformers_reads_the_folder_the_same_way(default_vision_bundle, mnist_splits):
    """The folder is a real HF folder: its image processor gives the tensors training used, its model the same logits."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    folder = default_vision_dir()
    proc = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    images = mnist_splits.test.images[:200]
    x = proc(images=[im[:, :, None] for im in images], return_tensors="pt",
             input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(x, pixels(images), atol=1e-6, rtol=0)
    with torch.no_grad():
        plain = model(pixel_values=x).logits
        ours = default_vision_bundle.model(pixel_values=x).logits
    torch.testing.assert_close(plain, ours, atol=1e-4, rtol=0)
    acc = float((plain.argmax(-1).numpy() == np.asarray(mnist_splits.test.labels[:200])).mean())
    assert acc >= 0.97


def test_cli_eval_default_vision(default_vision_bundle, capsys):
    assert main(["eval", "default-vision", "--dataset", "mnist", "--limit", "300", "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "mnist" and out["n"] == 300 and out["accuracy"] >= 0.97
    assert main(["eval", "default-vision", "--limit", "100", "--json", "--no-latency"]) == 0     # mnist by default
    assert json.loads(capsys.readouterr().out)["dataset"] == "mnist"


def test_shifted_digits_are_harder_but_not_chance(default_vision_bundle, capsys):
    assert main(["eval", "default-vision", "--dataset", "mnist_shifted", "--limit", "400", "--json",
                 "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.2 < out["accuracy"] < 0.98


def test_prepare_only_vision_is_cached_and_both_is_the_default(default_vision_bundle, capsys):
    assert main(["prepare", "--only", "vision", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is True and out["source"] == "default-vision" and out["test_accuracy"] >= 0.98


def test_transforms_on_the_real_vision_default(default_vision_bundle, mnist_splits):
    from axlab.compress import apply_recipe
    from axlab.core.measure import evaluate
    b = default_vision_bundle
    test = mnist_splits.test.head(1000)
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    recipe = [{"op": "prune_heads", "params": {"heads": {"3": [0]}}},
              {"op": "quantize_int8", "params": {}}]
    variant = apply_recipe(b.model, recipe, tokenizer=b.processor, splits=mnist_splits)
    assert all(torch.equal(before[k], v) for k, v in b.model.state_dict().items())
    assert evaluate(variant, b.processor, test, progress=False)["accuracy"] >= 0.95
