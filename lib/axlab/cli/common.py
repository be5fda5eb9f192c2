"""What every ``axlab`` command shares: the model/data arguments, loading both (labels matched), the output format."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["emit", "add_model_args", "add_data_args", "load_bundle", "load_splits", "load_model_and_data",
           "data_notes", "positive_int"]


def emit(obj, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        for k, v in obj.items():
            sys.stdout.write(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}\n")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (refused before anything slow runs)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {v}")
    return v


def add_data_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--dataset", default=default,
                   help="registry name (see `axlab datasets`: text sets, or 'mnist' / 'mnist_shifted' for images), "
                        "a CSV/TSV path, a JSON manifest of split files, or images: a folder with one subfolder per "
                        "class, a .zip of one, or a CSV of image paths and labels. Default: rotten_tomatoes for a "
                        "text model, mnist for an image model")
    p.add_argument("--text-column")
    p.add_argument("--image-column", help="for a CSV of image paths: the column with the paths")
    p.add_argument("--label-column")
    p.add_argument("--train", metavar="FILE", help="your training split (CSV/TSV), used as given")
    p.add_argument("--validation", metavar="FILE", help="your validation split, used as given")
    p.add_argument("--test", metavar="FILE", help="your test split, used as given")
    p.add_argument("--split-column", help="a column of the --dataset file saying train / validation / test "
                                          "(a column named 'split' is used automatically)")
    p.add_argument("--seed", type=int, default=0, help="seed for a split axlab makes itself")


def add_model_args(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    p.add_argument("model", nargs="?", default="default",
                   help="'default' (text), 'default-vision' (the MNIST ViT), a local folder or a hub id")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle (.bin) checkpoint you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (only if trusted)")
    if dataset:
        add_data_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def load_bundle(args):
    from axlab.core.loading import load_model
    return load_model(args.model, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)


DEFAULT_DATASETS = {"text": "rotten_tomatoes", "image": "mnist"}


def dataset_modality(dataset: str | None) -> str | None:
    """``"image"`` for an image dataset (built-in name, folder, zip, CSV of image paths), ``"text"`` for a text one,
    None when the name says nothing (no dataset given)."""
    from pathlib import Path

    from axlab.core.images import IMAGE_DATASETS, IMAGE_SUFFIXES
    if dataset is None:
        return None
    if dataset in IMAGE_DATASETS:
        return "image"
    path = Path(dataset).expanduser()
    if path.is_dir() or path.suffix.lower() == ".zip":
        return "image"
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd
        try:
            head = pd.read_csv(path, nrows=20, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        except Exception:  # noqa: BLE001  (the text loader gives the clear error)
            return "text"
        for col in head.columns:
            values = head[col].dropna().astype(str)
            if len(values) and values.str.lower().str.endswith(IMAGE_SUFFIXES).all():
                return "image"
    return "text"


def load_splits(args, bundle=None):
    """The dataset named by the arguments, its labels matched to ``bundle``'s model by name (DataError if not).

    Image data (``mnist``, ``mnist_shifted``, an image folder / zip / CSV of image paths) is read with
    :func:`axlab.core.images.load_image_dataset`, text data with :func:`axlab.core.data.load_dataset`;
    a text model given image data (or the other way round) is a clear error. Without ``--dataset`` the
    model's modality picks the default (rotten_tomatoes or mnist).
    """
    from axlab.core.data import align_labels, load_dataset
    from axlab.core.errors import DataError
    model_kind = bundle.modality if bundle is not None else None
    dataset = args.dataset
    own_files = any(getattr(args, k, None) for k in ("train", "validation", "test"))
    if dataset is None and not own_files:
        dataset = DEFAULT_DATASETS[model_kind or "text"]
    data_kind = dataset_modality(dataset) or "text"
    if model_kind is not None and data_kind != model_kind:
        if model_kind == "image":
            raise DataError(f"'{args.model}' is an image model, but '{dataset}' is text data.",
                            "Give image data: --dataset mnist, mnist_shifted, a folder with one subfolder per class, "
                            "a .zip of one, or a CSV of image paths and labels.")
        raise DataError(f"'{args.model}' is a text model, but '{dataset}' is image data.",
                        "Give text data (see `axlab datasets`, or a CSV/TSV of texts and labels), or an image model "
                        "such as 'default-vision'.")
    if data_kind == "image":
        from axlab.core.images import load_image_dataset
        if own_files:
            raise DataError("--train / --validation / --test files are for text data.",
                            "For images, give one folder with train/validation/test subfolders as --dataset.")
        splits = load_image_dataset(dataset, seed=args.seed, image_column=getattr(args, "image_column", None),
                                    label_column=args.label_column)
    else:
        splits = load_dataset(dataset, seed=args.seed, text_column=args.text_column, label_column=args.label_column,
                              train=getattr(args, "train", None), validation=getattr(args, "validation", None),
                              test=getattr(args, "test", None), split_column=getattr(args, "split_column", None))
    return align_labels(splits, bundle.model) if bundle is not None else splits


def load_model_and_data(args):
    """(bundle, splits): the data is loaded second but checked against the model's labels at once."""
    bundle = load_bundle(args)
    return bundle, load_splits(args, bundle)


def data_notes(splits) -> list[str]:
    """What a reader of the figures must know about the data (who split it, how labels were matched)."""
    return list(getattr(splits, "notes", []) or [])


def measure_against_base(base_model, model, tokenizer, split, args,
                         split_name: str = "test") -> tuple[dict, dict, dict]:
    """(base, variant, compare): both measured on ``split``; latency interleaved in the same rounds.

    ``compare`` holds the accuracy change, the size ratio and, per batch size, the speed-up with
    its range over the rounds and ``within_noise`` (that range includes 1x: not a result).
    """
    from axlab.core.measure import describe_speedup, measure
    with_latency = not getattr(args, "no_latency", False)
    threads = getattr(args, "threads", None)
    base = measure(base_model, tokenizer, split, split_name=split_name, with_latency=False, progress=False).to_dict()
    new = measure(model, tokenizer, split, split_name=split_name, with_latency=with_latency, threads=threads,
                  progress=False, compare_to=base_model if with_latency else None).to_dict()
    compare = {"accuracy_delta_points": round(100 * (new["accuracy"] - base["accuracy"]), 2),
               "size_ratio": new["size_bytes"] / base["size_bytes"] if base.get("size_bytes") else None}
    vs = new.get("latency_vs_base")
    if vs:
        for key in ("b1", "b32"):
            r = vs[key]
            base[f"latency_{key}_ms"], base[f"latency_{key}_spread_ms"] = r["base_ms"], r["base_spread_ms"]
            compare[f"speedup_{key}"] = r["speedup"]
            compare[f"speedup_{key}_range"] = r["speedup_range"]
            compare[f"within_noise_{key}"] = r["within_noise"]
            compare[f"speedup_{key}_text"] = describe_speedup(r)
        compare["latency_note"] = (f"base and variant measured interleaved in {vs['b1']['rounds']} rounds; a ratio "
                                   "is 'within noise' when the two swap order in some round")
    return base, new, compare


def save_variant(args, splits, recipe: list, measurements: dict, base_measurements: dict | None = None,
                 notes: str = "") -> str | None:
    """Save the variant (``--save NAME``) and, once per workspace, the base model it is compared with."""
    if not getattr(args, "save", None):
        return None
    from axlab.core.measure import hardware_info
    from axlab.store.variants import Variant, VariantStore
    store, hw = VariantStore(), hardware_info()
    ws = getattr(args, "workspace", None) or "default"
    kw = {"workspace": ws} if "workspace" in Variant.__dataclass_fields__ else {}
    if base_measurements and not any(not v.recipe for v in store.list(workspace=ws, base=args.model,
                                                                        dataset=splits.name)):
        store.add(Variant(name="base", base=args.model, dataset=splits.name, recipe=[],
                          measurements=base_measurements, hardware=hw, **kw))
    v = store.add(Variant(name=args.save, base=args.model, dataset=splits.name, recipe=list(recipe),
                          measurements=measurements, hardware=hw, notes=notes, **kw))
    return v.id
