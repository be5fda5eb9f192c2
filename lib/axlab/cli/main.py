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
from axlab.cli.common import add_model_args, emit
from axlab.core.errors import AxlabError

COMMAND_MODULES = (analysis, prune, quantize, export, sweep)   # each adds its commands with add_commands(sub)


def cmd_prepare(args) -> None:
    from axlab.core.train import prepare
    card = prepare(force=args.force)
    emit({"folder": card["folder"], "test_accuracy": card["test"]["accuracy"],
          "validation_accuracy": card["validation"]["accuracy"], "cached": card["cached"],
          "train_seconds": card["train_seconds"]}, args.json)


def cmd_eval(args) -> None:
    from axlab.core.data import load_dataset
    from axlab.core.loading import load_model
    from axlab.core.measure import hardware_info, measure
    bundle = load_model(args.model, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    splits = load_dataset(args.dataset, seed=args.seed, text_column=args.text_column, label_column=args.label_column)
    split = splits[args.split].head(args.limit)
    m = measure(bundle.model, bundle.tokenizer, split, split_name=args.split, with_latency=not args.no_latency,
                threads=args.threads)
    emit({"model": args.model, "dataset": splits.name, **m.to_dict(), "hardware": hardware_info()}, args.json)


def cmd_datasets(args) -> None:
    from axlab.core.data import DATASETS
    emit({name: desc for name, (_, desc, _) in DATASETS.items()}, args.json)


def cmd_variants(args) -> None:
    from axlab.store.variants import VariantStore
    rows = [{"id": v.id, "name": v.name, "base": v.base, "steps": [s["op"] for s in v.recipe],
             "accuracy": v.measurements.get("accuracy")} for v in VariantStore().list(workspace=args.workspace)]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axlab", description="Make a fine-tuned transformer smaller and faster.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare", help="build and cache the embedded default model (once)")
    s.add_argument("--force", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_prepare)
    s = sub.add_parser("eval", help="accuracy, macro-F1, latency and size of a model")
    add_model_args(s)
    s.add_argument("--split", default="test", choices=["train", "validation", "test"])
    s.add_argument("--limit", type=int, default=None, help="first N examples of the split")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _entry() -> None:
    sys.exit(main())
