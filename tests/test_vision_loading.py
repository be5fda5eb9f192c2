"""Loading image classifiers (folders written by save_pretrained, no network) and exporting them as variants."""
import json

import numpy as np
import pytest
import torch
from axlab.core.errors import ModelLoadError, UnsupportedModelError
from axlab.core.loading import ModelBundle, load_model, load_variant
from axlab.core.testing import (VISION_ARCHS, save_tiny_vision, tiny_image_processor, tiny_image_split,
                                tiny_vision_model)


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_load_image_classifier_folder(tmp_path, arch, one_thread):
    folder = save_tiny_vision(tmp_path / arch, arch)
    b = load_model(str(folder))
    assert b.modality == "image" and b.arch == arch
    assert type(b.processor).__name__.startswith("ViTImageProcessor")
    assert b.tokenizer is b.processor                       # the older name still works
    assert b.labels == ["c0", "c1", "c2"]
    assert b.model.config._attn_implementation == "axlab"
    from axlab.core.measure import evaluate
    ev = evaluate(b.model, b.processor, tiny_image_split(12))
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["n"] == 12


def test_text_bundle_reports_text_modality_and_accepts_tokenizer_keyword(tokenizer):
    from axlab.core.testing import tiny_model
    b = ModelBundle(model=tiny_model("bert"), tokenizer=tokenizer, labels=["a", "b"], source="x", path="x")
    assert b.processor is tokenizer and b.modality == "text"
    b.tokenizer = None
    assert b.processor is None


def test_vision_folder_errors(tmp_path):
    # no weights
    folder = save_tiny_vision(tmp_path / "noweights", "vit")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(folder))
    # pickle only: refused unless allowed
    folder = save_tiny_vision(tmp_path / "pickle", "vit")
    (folder / "model.safetensors").unlink()
    torch.save(tiny_vision_model("vit").state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(folder))
    assert load_model(str(folder), allow_pickle=True).modality == "image"
    # a vision backbone without a classification head
    from transformers import ViTConfig, ViTModel
    folder = tmp_path / "backbone"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                       image_size=28, patch_size=7, num_channels=1)).save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="no image-classification head"):
        load_model(str(folder))
    # an architecture axlab does not know
    from transformers import ResNetConfig, ResNetForImageClassification
    folder = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                              num_labels=2)).save_pretrained(folder)
    with pytest.raises(UnsupportedModelError, match="resnet"):
        load_model(str(folder))
    # no image processor
    folder = tmp_path / "noproc"
    tiny_vision_model("vit").save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="image processor"):
        load_model(str(folder))


def test_default_vision_not_built_gives_a_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("AXLAB_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="default vision model has not been built") as e:
        load_model("default-vision")
    assert "axlab prepare" in e.value.hint


@pytest.mark.parametrize("arch", VISION_ARCHS)
def test_exported_pruned_quantized_vit_reloads_equal(tmp_path, arch, one_thread):
    """The variant folder holds the image processor; the reload check runs on probe images; reload == saved."""
    from axlab.compress import apply_recipe
    from axlab.core.folder import atomic_folder, write_variant_files
    from axlab.core.measure import predict_logits
    folder = save_tiny_vision(tmp_path / "base", arch)
    b = load_model(str(folder))
    recipe = [{"op": "prune_heads", "params": {"heads": {"0": [1], "1": [0, 3]}}},
              {"op": "prune_ffn", "params": {"neurons": {"1": list(range(0, 64, 3))}}},
              {"op": "quantize_rtn", "params": {"bits": 4}}]
    variant = apply_recipe(b.model, recipe)
    with atomic_folder(tmp_path / "out") as tmp:
        side = write_variant_files(variant, b.processor, tmp, recipe=recipe, measurements={}, base=str(folder),
                                   labels=b.labels, name="v", dataset="tiny", extra=None)
    out = tmp_path / "out"
    assert (out / "preprocessor_config.json").exists()
    assert "images" in side["probe"] and len(side["probe"]["logits"]) == 3
    back = load_variant(out)                                    # verifies the probe logits itself
    assert back.modality == "image" and back.labels == b.labels
    assert type(back.processor).__name__ == type(b.processor).__name__
    images = tiny_image_split(10).images
    torch.testing.assert_close(predict_logits(back.model, back.processor, images),
                               predict_logits(variant, b.processor, images), atol=1e-5, rtol=0)
    # a damaged record is caught by the probe check
    side = json.loads((out / "axlab_variant.json").read_text())
    side["probe"]["logits"][0][0] += 1.0
    (out / "axlab_variant.json").write_text(json.dumps(side))
    with pytest.raises(ModelLoadError, match="different logits"):
        load_variant(out)


def test_plain_vision_export_loads_with_transformers(tmp_path, one_thread):
    from transformers import AutoModelForImageClassification

    from axlab.core.folder import atomic_folder, write_variant_files
    folder = save_tiny_vision(tmp_path / "base", "vit")
    b = load_model(str(folder))
    with atomic_folder(tmp_path / "out") as tmp:
        side = write_variant_files(b.model, b.processor, tmp, recipe=[], measurements={}, base=str(folder),
                                   labels=b.labels, name=None, dataset=None, extra=None)
    assert side["plain"] is True
    assert "AutoModelForImageClassification" in (tmp_path / "out" / "README.md").read_text()
    m = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    x = torch.from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with torch.no_grad():
        torch.testing.assert_close(m(pixel_values=x).logits, b.model(pixel_values=x).logits, atol=1e-5, rtol=0)
