"""The teaching notebooks at their default parameters: each one's wall time, top to bottom.

Runs every notebook as a learner opens it (no injected parameters: the defaults in its
``parameters`` cell), one at a time in a fresh python3 kernel (nbclient), and records
the wall time of each, the load average before and after, and whether it stayed under
the 5-minute target. Caches (the AxFormer search, importance scores) are used as a
learner's second run would use them; ``--cold`` sets axlab's analysis cache aside for the
run (a learner's first run; it is put back afterwards). The AxFormer search cache is kept:
reusing it is a parameter of notebooks 3 and 5 (move its file away to time a first search).
Results go to bench/results/notebooks.json.

    python bench/bench_notebooks.py                 # all six
    python bench/bench_notebooks.py 01_tour 04_quantization
    python bench/bench_notebooks.py --cold --out /tmp/cold.json
"""

from __future__ import annotations

import argparse
import shutil
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
TARGET_S = 300.0
NOTEBOOKS = ["01_tour", "02_which_heads_matter", "03_axformer", "04_quantization", "05_putting_it_together", "06_vision"]


def run_one(name: str, timeout_s: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    error = None
    cpu = {"s": None}
    cells: list[dict] = []
    last = {"t": time.perf_counter(), "cpu": 0.0}
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})

    def kernel_cpu(cell=None, cell_index=None, **_):   # after each cell: the kernel's CPU time so far
        try:
            import psutil
            t = psutil.Process(client.km.provisioner.process.pid).cpu_times()
            cpu["s"] = t.user + t.system + t.children_user + t.children_system
        except Exception:  # noqa: BLE001  (CPU time is extra information)
            pass
        now = time.perf_counter()
        if cell is not None and cell.get("cell_type") == "code":
            first = next((ln for ln in cell.get("source", "").splitlines() if ln.strip() and not ln.startswith("#")), "")
            cells.append({"cell": cell_index, "seconds": round(now - last["t"], 2),
                          "cpu_s": round((cpu["s"] or 0.0) - last["cpu"], 2), "first_line": first[:80]})
        last["t"], last["cpu"] = now, cpu["s"] or 0.0
    client.on_cell_executed = kernel_cpu
    try:
        client.execute()
    except Exception as e:  # noqa: BLE001  (recorded, the next notebook still runs)
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    seconds = time.perf_counter() - t0
    out = ROOT / "test-artifacts" / "notebooks-defaults"
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / f"{name}.ipynb")
    return {"notebook": f"{name}.ipynb", "seconds": round(seconds, 1), "minutes": round(seconds / 60, 2),
            "kernel_cpu_s": round(cpu["s"], 1) if cpu["s"] is not None else None,
            "under_target": error is None and seconds < TARGET_S, "error": error,
            "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "slowest_cells": sorted(cells, key=lambda c: -c["seconds"])[:5]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=NOTEBOOKS)
    ap.add_argument("--timeout", type=int, default=1800, help="per cell, seconds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "notebooks.json"))
    ap.add_argument("--cold", action="store_true",
                    help="a learner's first run: the analysis cache is set aside (and put back afterwards)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    from axlab.core.measure import hardware_info
    from axlab.core.paths import cache_dir

    saved = None
    if args.cold:
        live = cache_dir("analysis")
        saved = live.with_name(f"analysis.bench-saved-{int(time.time())}")
        live.rename(saved)
    try:
        return _run(args, hardware_info)
    finally:
        if saved is not None:
            shutil.rmtree(cache_dir("analysis"), ignore_errors=True)
            saved.rename(saved.with_name("analysis"))


def _run(args, hardware_info) -> dict:
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    rows = {r["notebook"]: r for r in previous.get("runs", [])}
    for name in args.names:
        name = name.removesuffix(".ipynb")
        r = run_one(name, args.timeout)
        r["cache"] = "cold (analysis cache empty)" if args.cold else "warm (cached analyses and searches reused)"
        rows[r["notebook"]] = r
        print(json.dumps(r), file=sys.stderr)
        result = {"benchmark": "notebooks top to bottom at their default parameters (nbclient, fresh kernel)",
                  "target_s": TARGET_S, "runs": [rows[k] for k in sorted(rows)], "hardware": hardware_info(),
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "note": ("load_average_* are os.getloadavg() before and after each notebook; above ~1.5 on 2 cores "
                           "other processes shared the CPU and the times are longer than on a quiet machine. "
                           "kernel_cpu_s is the CPU time the notebook's kernel used (all its threads): on a quiet "
                           "2-core machine the wall time lies between kernel_cpu_s / 2 (both cores busy throughout) "
                           "and kernel_cpu_s (one core)")}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
