"""The vision default's training code on a tiny configuration: deterministic, a real HF folder, cached, validated."""
import json

import pytest
import torch
from axlab.core.train_vision import VisionTrainConfig, image_processor_for, pixels, prepare_vision

TINY = VisionTrainConfig(layers=1, hidden=16, heads=4, intermediate=32, epochs=1, threads=1)


def test_tiny_training_is_deterministic_cached_and_a_real_folder(tmp_path):
    from safetensors.torch import load_file
    calls = []
    a = prepare_vision(TINY, out=tmp_path / "a", progress=lambda done, total, msg: calls.append((done, total)))
    b = prepare_vision(TINY, out=tmp_path / "b", progress=False)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test"] == b["test"] and a["cached"] is False
    assert calls and calls[-1][0] == calls[-1][1]                          # progress reached its total
    assert prepare_vision(TINY, out=tmp_path / "a")["cached"] is True
    card = json.loads((tmp_path / "a" / "axlab_card.json").read_text())
    assert card["labels"] == [str(d) for d in range(10)] and card["seed"] == 0 and len(card["data_sha256"]) == 64
    assert torch.get_num_threads() >= 1 and not torch.are_deterministic_algorithms_enabled()   # restored
    from axlab.core.loading import load_model
    bundle = load_model(str(tmp_path / "a"))
    assert bundle.modality == "image" and bundle.labels == card["labels"] and bundle.info["test"] == card["test"]


def test_processor_matches_training_pixels():
    import numpy as np
    images = (np.random.default_rng(0).random((4, 28, 28)) * 255).astype(np.uint8)
    proc = image_processor_for(TINY)
    x = proc(images=[im[:, :, None] for im in images], return_tensors="pt",
             input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(x, pixels(images), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [dict(hidden=30, heads=4), dict(patch_size=5), dict(epochs=0), dict(lr=0.0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        VisionTrainConfig(**bad)
