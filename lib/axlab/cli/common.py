"""What every ``axlab`` command shares: the model/data arguments and the output format."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["emit", "add_model_args"]


def emit(obj, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    else:
        for k, v in obj.items():
            sys.stdout.write(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}\n")


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
