"""The ``axlab`` command: the headless path through the library.

Core commands live here; each stage's module in this package (analysis, prune,
quantize, export) adds its own through ``add_commands(sub)``. Bad input exits with
status 2 and prints the error and how to fix it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from axlab.cli import analysis, export, prune, quantize, sweep
from axlab.cli.common import add_data_args, add_model_args, data_notes, emit, load_model_and_data, positive_int
from axlab.core.errors import AxlabError

COMMAND_MODULES = (analysis, prune, quantize, export, sweep)   # each adds its commands with add_commands(sub)


def _card_summary(card: dict) -> dict:
    return {"folder": card["folder"], "test_accuracy": (card.get("test") or {}).get("accuracy"),
            "test_macro_f1": (card.get("test") or {}).get("macro_f1"),
            "validation_accuracy": (card.get("validation") or {}).get("accuracy"), "cached": card["cached"],
            "train_seconds": card["train_seconds"], "labels": card.get("labels"),
            "split_sizes": card.get("split_sizes"), "notes": [n for n in (card.get("split_note"),) if n],
            "use_it": f"axlab eval {card['folder']} ...  (or pass the folder as the model anywhere)"}


def cmd_prepare(args) -> None:
    """Build the embedded defaults: the text model, then the vision model (``--only`` picks one)."""
    out = {}
    if args.only in (None, "text"):
        from axlab.core.train import prepare
        out["text"] = _card_summary(prepare(force=args.force))
    if args.only in (None, "vision"):
        from axlab.core.train_vision import prepare_vision
        card = prepare_vision(force=args.force, progress=None if args.progress else False)
        out["vision"] = {**_card_summary(card), "source": "default-vision",
                         "use_it": "axlab eval default-vision --dataset mnist  (or pass default-vision as the model)"}
    emit(out[args.only] if args.only else out, args.json)


def cmd_train(args) -> None:
    from axlab.cli.common import load_splits
    from axlab.core.train import TrainConfig, train
    if args.patience < 0:
        from axlab.core.errors import AxlabError
        raise AxlabError(f"--patience must be 0 or more, not {args.patience}.",
                         "Use e.g. --patience 1 (0: no early stopping).")
    if args.dataset is None and not (args.train or args.validation or args.test):
        from axlab.core.errors import DataError
        from axlab.core.data import DATASETS
        raise DataError("No data to train on.", f"Pass --dataset (one of {', '.join(DATASETS)}, or a CSV/TSV file) "
                                                "or your own splits with --train FILE [--validation FILE --test FILE].")
    splits = load_splits(args)
    if not hasattr(splits.train, "texts"):
        from axlab.core.errors import DataError
        raise DataError(f"'{splits.name}' is image data; `axlab train` fine-tunes text encoders.",
                        "For images, `axlab prepare --only vision` builds the MNIST ViT ('default-vision').")
    cfg = TrainConfig(dataset=splits.name, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, max_length=args.max_length, encoder=args.encoder,
                      patience=None if args.patience == 0 else args.patience, max_train=args.max_train)
    card = train(cfg, splits=splits, out=args.out, force=args.force, progress=None if args.progress else False)
    emit(_card_summary(card), args.json)


def cmd_eval(args) -> None:
    from axlab.core.measure import hardware_info, measure
    bundle, splits = load_model_and_data(args)
    split = splits[args.split].head(args.limit)
    if len(split) == 0:
        from axlab.core.errors import DataError
        raise DataError(f"The {args.split} split of '{splits.name}' is empty ({splits.sizes}).",
                        f"Pick another split (--split), or give that split's file (--{args.split} FILE).")
    m = measure(bundle.model, bundle.tokenizer, split, split_name=args.split, with_latency=not args.no_latency,
                threads=args.threads)
    out = {"model": args.model, "dataset": splits.name, **m.to_dict(),
           "notes": data_notes(splits) + list(m.notes or []), "hardware": hardware_info()}
    emit(out, args.json)


def cmd_datasets(args) -> None:
    from axlab.core.data import DATASETS
    from axlab.core.images import IMAGE_DATASETS
    emit({**{name: desc for name, (_, desc, _) in DATASETS.items()}, **IMAGE_DATASETS}, args.json)


def cmd_variants(args) -> None:
    from axlab.store.variants import VariantStore
    rows = [{"id": v.id, "name": v.name, "base": v.base, "steps": [s["op"] for s in v.recipe],
             "accuracy": v.measurements.get("accuracy")} for v in VariantStore().list(workspace=args.workspace)]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axlab", description="Make a fine-tuned transformer smaller and faster.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare", help="build and cache the embedded default models (once): the text model "
                                       "('default') and the MNIST ViT ('default-vision')")
    s.add_argument("--only", choices=["text", "vision"], help="build only one of the two")
    s.add_argument("--force", action="store_true")
    s.add_argument("--progress", action="store_true", help="show a progress bar while the vision model trains")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_prepare)
    s = sub.add_parser("train", help="fine-tune an encoder (default: the packaged MiniLM) on a dataset; cached")
    from axlab.core.train import TRAIN_DEFAULTS, TrainConfig
    d = TrainConfig()
    s.add_argument("--encoder", default="minilm",
                   help="'minilm' (the packaged encoder), a model folder or a hub id, with or without a head")
    add_data_args(s, default=None)
    s.add_argument("--epochs", type=positive_int, default=TRAIN_DEFAULTS["epochs"], help="at most this many epochs")
    s.add_argument("--patience", type=int, default=TRAIN_DEFAULTS["patience"],
                   help="stop after this many epochs without a better validation score (0: no early stopping)")
    s.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    s.add_argument("--lr", type=float, default=d.lr)
    s.add_argument("--max-length", type=positive_int, default=TRAIN_DEFAULTS["max_length"])
    s.add_argument("--max-train", type=positive_int, default=None, help="train on a seeded subset of N examples")
    s.add_argument("--out", help="save here instead of the cache (a model folder)")
    s.add_argument("--force", action="store_true", help="train again even if cached")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_train)
    s = sub.add_parser("eval", help="accuracy, macro-F1, per-class figures, latency and size of a model")
    add_model_args(s)
    s.add_argument("--split", default="test", choices=["train", "validation", "test"])
    s.add_argument("--limit", type=positive_int, default=None, help="first N examples of the split")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--no-latency", action="store_true")
    s.set_defaults(fn=cmd_eval)
    s = sub.add_parser("datasets", help="list the built-in datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_datasets)
    s = sub.add_parser("variants", help="list saved variants")
    s.add_argument("--workspace", default="default")
    s.set_defaults(fn=cmd_variants)
    for mod in COMMAND_MODULES:
        mod.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.cmd == "prepare" else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except AxlabError as e:
        sys.stderr.write(f"error: {e.message}\n" + (f"how to fix: {e.hint}\n" if e.hint else ""))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _entry() -> None:
    sys.exit(main())
