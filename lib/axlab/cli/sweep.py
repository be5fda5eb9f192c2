"""CLI: run a sweep of recipes on Ray (this machine, or a cluster) and print its Pareto front.

    axlab sweep SPEC.json --json                     # local Ray, one worker per core
    axlab sweep SPEC.yaml --workers 2
    axlab sweep SPEC.json --address ray://head:10001  # an existing cluster (or RAY_ADDRESS)
    axlab sweep SPEC.json --backend sequential        # no Ray: one trial after another
    axlab sweep --example > spec.json                 # a spec to start from

Progress (trials done / running / failed, the size of the front so far) goes to stderr
with tqdm. Ctrl-C keeps every finished trial; running the same spec again resumes.
"""

from __future__ import annotations

import json
import sys

from axlab.cli.common import emit
from axlab.core.errors import AxlabError

__all__ = ["add_commands", "EXAMPLE"]

EXAMPLE = {
    "model": "default", "dataset": "rotten_tomatoes",
    "space": {"head_fraction": [0.25, 0.5], "importance": ["gradient"], "ffn_fraction": [0.0, 0.25],
              "quantizer": ["int8", "rtn"], "bits": [4]},
    "sampling": "grid", "budget": 8, "objectives": ["val_accuracy", "latency_b1_ms", "size_bytes"],
    "n_val": 500, "n_test": 1000, "latency_runs": 30, "threads": 1, "max_accuracy_drop": 0.01,
}


def _tqdm_updates(total: int):
    """An on_update callback drawing one tqdm bar: done / running / failed / front."""
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="sweep", unit="trial", file=sys.stderr, disable=None)

    def update(state: dict) -> None:
        finished = state["done"] + state["failed"]
        if finished > bar.n:
            bar.update(finished - bar.n)
        bar.set_postfix(done=state["done"], running=state["running"], failed=state["failed"], front=state["front"],
                        refresh=True)
    return bar, update


def cmd_sweep(args) -> None:
    from axlab.sweep import SweepSpec, run
    if args.example:
        sys.stdout.write(json.dumps(EXAMPLE, indent=2) + "\n")
        return
    if not args.spec:
        raise AxlabError("No sweep spec given.", "Pass a .json or .yaml spec (`axlab sweep --example > spec.json`).")
    spec = SweepSpec.load(args.spec)
    bar, update = _tqdm_updates(len(spec.trials()))
    interrupted = False
    try:
        res = run(spec, backend=args.backend, address=args.address, workers=args.workers, workspace=args.workspace,
                  progress=False, on_update=update, max_retries=args.max_retries)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        from axlab.sweep import load
        res = load(spec, workspace=args.workspace)
        sys.stderr.write("interrupted: the finished trials are kept; run the same command again to resume\n")
    df = res.table()
    front = df[df.pareto] if len(df) else df
    keep = ["label", "val_accuracy", "accuracy", "latency_b1_ms", "size_mb", "recipe", "chosen"]
    out = {"sweep_id": res.sweep_id, "workspace": res.workspace, "counts": res.counts, "stopped": res.stopped,
           "interrupted": interrupted, "ran": len(res.ran), "skipped": len(res.skipped), "backend": res.backend,
           "workers": res.workers, "timings": {k: round(v, 2) for k, v in res.timings.items()},
           "chosen": {k: v for k, v in (res.chosen() or {}).items() if k in keep + ["variant_id"]} or None,
           "front": front[keep[:-1]].round(4).to_dict(orient="records"),
           "failed": df[df.status == "failed"][["label", "error"]].to_dict(orient="records") if len(df) else []}
    if args.json:
        out["trials"] = df.drop(columns=["steps"]).round(4).to_dict(orient="records")
    emit(out, args.json)
    if interrupted:
        raise SystemExit(130)


def add_commands(sub) -> None:
    p = sub.add_parser("sweep", help="run many recipes (a sweep spec) on Ray and print the Pareto front")
    p.add_argument("spec", nargs="?", help="sweep spec (.json or .yaml); `--example` prints one")
    p.add_argument("--example", action="store_true", help="print an example spec and exit")
    p.add_argument("--backend", default="ray", choices=["ray", "sequential"])
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--workers", type=int, default=None, help="local Ray workers (default: one per core)")
    p.add_argument("--workspace", default="default", help="the variant store workspace the trials land in")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a trial whose worker process died")
    p.add_argument("--json", action="store_true", help="print JSON (with every trial)")
    p.set_defaults(fn=cmd_sweep)
