"""The same 8-trial sweep on the default model, one trial after another vs on Ray with 2 workers.

    python bench/bench_sweep.py                  # writes bench/results/sweep.json
    python bench/bench_sweep.py --workers 2 --n-val 1000 --n-test 2000 --out /tmp/sweep.json

The sweep: 25% or 50% of the heads removed (gradient importance), 0% or 25% of the FFN
neurons removed (magnitude), then torch dynamic int8 or RTN 4-bit: 2 x 2 x 2 = 8 trials.
Each trial rebuilds its variant from the recipe, measures all 1,000 validation reviews
(used to choose) and all 2,000 test reviews plus 30 batch-1 latency runs (reported), on
one torch thread. Both runs use the same trial function and the same plan (the head
importance is computed once beforehand and cached, so neither run pays for it), and write
to separate scratch stores so neither resumes from the other.

Reported: wall time of each ``axlab.sweep.run`` call end to end (Ray start-up, putting
the base in the object store and shutting down included), the ratio, per-trial accuracies
of both runs (must be equal), per-trial costs (build / validate / test seconds), the
driver's own cost per trial, and the machine's load average before and after, since
other programs on a shared 2-core machine change the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def projection(trial_s: float, driver_s: float, fixed_s: float) -> dict:
    """Trials per hour from the measured per-trial cost (1 thread per trial), for 2 and 16 workers.

    Assumes trials as costly as these, one per worker at a time, and no contention between
    workers (true on separate cores with enough memory bandwidth); the driver handles one
    result in ``driver_s``, so it caps throughput at 3600 / driver_s trials per hour.
    """
    out = {"trial_s": round(trial_s, 2), "driver_s_per_trial": round(driver_s, 4), "fixed_s": round(fixed_s, 1)}
    for w in (1, 2, 16):
        out[f"trials_per_hour_{w}_workers"] = round(3600 * w / trial_s)
        out[f"wall_s_for_8_trials_{w}_workers"] = round(fixed_s * (w > 1) + -(-8 // w) * trial_s, 1)
    out["driver_cap_trials_per_hour"] = round(3600 / driver_s) if driver_s else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sweep.json"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-val", type=int, default=None, help="validation examples (default: all 1,000)")
    ap.add_argument("--n-test", type=int, default=None, help="test examples (default: all 2,000)")
    ap.add_argument("--latency-runs", type=int, default=30)
    ap.add_argument("--order", default="seq-ray", choices=["seq-ray", "ray-seq"])
    args = ap.parse_args(argv)

    os.environ.setdefault("AXLAB_DATA", tempfile.mkdtemp(prefix="axlab-bench-sweep-"))
    import ray
    import torch

    from axlab.core.data import align_labels, load_dataset
    from axlab.core.loading import load_model
    from axlab.core.measure import hardware_info
    from axlab.store.variants import VariantStore
    from axlab.sweep import SweepSpec, run
    from axlab.sweep.trial import plan

    spec = SweepSpec(model=args.model, dataset="rotten_tomatoes", include_base=False,
                     space={"head_fraction": [0.25, 0.5], "importance": ["gradient"], "ffn_fraction": [0.0, 0.25],
                            "quantizer": ["int8", "rtn"], "bits": [4]},
                     n_val=args.n_val, n_test=args.n_test, latency_runs=args.latency_runs, threads=1)
    assert len(spec.trials()) == 8
    bundle = load_model(args.model)
    splits = align_labels(load_dataset("rotten_tomatoes"), bundle.model)
    t0 = time.perf_counter()
    plan(spec, bundle, splits)                       # head importance once (cached on disk for both runs)
    plan_s = time.perf_counter() - t0
    scratch = Path(tempfile.mkdtemp(prefix="axlab-bench-sweep-stores-"))
    runs = {}
    load_before = loadavg()
    order = ["sequential", "ray"] if args.order == "seq-ray" else ["ray", "sequential"]
    for backend in order:
        store = VariantStore(scratch / f"{backend}.sqlite")
        la = loadavg()
        t = time.perf_counter()
        res = run(spec, backend=backend, workers=args.workers if backend == "ray" else None, store=store,
                  bundle=bundle, splits=splits, progress=False)
        wall = time.perf_counter() - t
        df = res.table()
        assert res.counts["ok"] == 8, res.counts
        runs[backend] = {"wall_s": round(wall, 2), "load_before": la, "load_after": loadavg(),
                         "timings": {k: round(v, 3) for k, v in res.timings.items()}, "workers": res.workers,
                         "trials": [{"label": r.label, "recipe": r.recipe, "val_accuracy": r.val_accuracy,
                                     "test_accuracy": r.accuracy, "latency_b1_ms": round(r.latency_b1_ms, 3),
                                     "size_mb": round(r.size_mb, 2), "pareto": bool(r.pareto),
                                     "chosen": bool(r.chosen), "worker": r.worker,
                                     "seconds": {k: round(v, 2) for k, v in
                                                 next(t for t in res.trials if t["key"] == r.key)["seconds"].items()}}
                                    for r in df.itertuples()]}
        sys.stderr.write(f"{backend}: {wall:.1f} s\n")
    seq, par = runs["sequential"], runs["ray"]
    acc = {(t["label"], t["val_accuracy"], t["test_accuracy"]) for t in seq["trials"]}
    same = acc == {(t["label"], t["val_accuracy"], t["test_accuracy"]) for t in par["trials"]}
    per_trial = [t["seconds"]["total"] for t in seq["trials"]]
    par_trial = [t["seconds"]["total"] for t in par["trials"]]
    ratio = seq["wall_s"] / par["wall_s"]
    ray_fixed = par["wall_s"] - sum(par_trial) / par["workers"]      # what is not trial work spread over workers
    out = {
        "what": "the same 8-trial sweep on the default model: sequential (1 process, 1 torch thread) vs Ray "
                f"({args.workers} workers, 1 torch thread each)",
        "spec": spec.to_dict(), "sweep_id": spec.sweep_id, "order": order,
        "plan_s": round(plan_s, 2),
        "sequential": seq, "ray": par,
        "speedup": round(ratio, 3), "target": ">= 1.7x on 2 cores", "meets_target": ratio >= 1.7,
        "speedup_without_ray_start": round(seq["wall_s"] / (par["wall_s"] - par["timings"].get("ray_init_s", 0)), 3),
        "same_accuracies": same,
        "per_trial_s": {"sequential_median": round(statistics.median(per_trial), 2),
                        "sequential_sum": round(sum(per_trial), 2),
                        "ray_median": round(statistics.median(par_trial), 2), "ray_sum": round(sum(par_trial), 2),
                        "build_median": round(statistics.median(t["seconds"]["build"] for t in seq["trials"]), 2),
                        "validate_median": round(statistics.median(t["seconds"]["validate"] for t in seq["trials"]), 2),
                        "test_median": round(statistics.median(t["seconds"]["test"] for t in seq["trials"]), 2)},
        "ray_fixed_overhead_s": round(ray_fixed, 2),
        "projection": projection(statistics.median(par_trial), par["timings"].get("driver_record_s", 0) / 8,
                                 ray_fixed),
        "driver_record_s_per_trial": round(par["timings"].get("driver_record_s", 0) / 8, 4),
        "load_average": {"before": load_before, "after": loadavg()},
        "hardware": hardware_info(), "ray_version": ray.__version__, "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    sys.stdout.write(json.dumps({k: out[k] for k in ("speedup", "speedup_without_ray_start", "same_accuracies",
                                                     "per_trial_s",
                                                     "ray_fixed_overhead_s", "load_average")}, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
