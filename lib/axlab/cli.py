"""The ``axlab`` command: the headless path through the library.

Core commands live here; other modules add theirs through ``add_commands(sub)`` in a
``axlab/cli_<name>.py`` module listed in ``COMMAND_MODULES``. Bad input exits with
status 2 and prints the error and how to fix it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from .errors import AxlabError

COMMAND_MODULES = ("axlab.cli_analysis", "axlab.cli_prune", "axlab.cli_quantize", "axlab.cli_export", "axlab.cli_bench")


def _out(obj, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        for k, v in obj.items():
            sys.stdout.write(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}\n")


def cmd_prepare(args) -> None:
    from .default_model import prepare
    card = prepare(force=args.force)
    _out({"folder": card["folder"], "test_accuracy": card["test"]["accuracy"],
          "validation_accuracy": card["validation"]["accuracy"], "cached": card["cached"],
          "train_seconds": card["train_seconds"]}, args.json)


def cmd_eval(args) -> None:
    from .data import load_dataset
    from .loading import load_model
    from .measure import hardware_info, measure
    bundle = load_model(args.model, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    splits = load_dataset(args.dataset, seed=args.seed, text_column=args.text_column, label_column=args.label_column)
    split = splits[args.split].head(args.limit)
    m = measure(bundle.model, bundle.tokenizer, split, split_name=args.split, with_latency=not args.no_latency,
                threads=args.threads)
    _out({"model": args.model, "dataset": splits.name, **m.to_dict(), "hardware": hardware_info()}, args.json)


def cmd_datasets(args) -> None:
    from .data import DATASETS
    _out({name: desc for name, (_, desc, _) in DATASETS.items()}, args.json)


def cmd_variants(args) -> None:
    from .variants import VariantStore
    rows = [{"id": v.id, "name": v.name, "base": v.base, "steps": [s["op"] for s in v.recipe],
             "accuracy": v.measurements.get("accuracy")} for v in VariantStore().list(workspace=args.workspace)]
    sys.stdout.write(json.dumps(rows, indent=2) + "\n")


def add_model_args(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    p.add_argument("model", nargs="?", default="default", help="'default', a local folder or a hub id")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickle (.bin) checkpoint you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (only if trusted)")
    if dataset:
        p.add_argument("--dataset", default="rotten_tomatoes", help="registry name or a CSV/TSV path")
        p.add_argument("--text-column")
        p.add_argument("--label-column")
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")


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
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
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
