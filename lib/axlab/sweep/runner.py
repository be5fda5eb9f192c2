"""Run a sweep: every trial a Ray task (or, for tiny runs and comparison, one after another).

::

    result = axlab.sweep.run(SweepSpec(space={"head_fraction": [0.25, 0.5], "quantizer": ["none", "int8"]}))
    result.table()          # one row per trial: recipe in words, validation + test measurements, front, chosen
    result.chosen()         # the point chosen on validation (test is reported, never used to choose)

Ray: local by default (``ray.init`` with as many workers as cores, no dashboard, token
authentication off because nothing listens beyond this machine), or an existing cluster
with ``address=`` / ``RAY_ADDRESS``. The base model, tokenizer and data go to the object
store once; each worker process unpacks them once and keeps them for its later trials.
Each trial is a ``num_cpus=1`` task with a fixed number of torch threads, retried when
its worker process dies. Results stream back with ``ray.wait``; only this process (the
driver) writes the SQLite store, as each trial finishes, so a stop, a Ctrl-C or a killed
driver loses nothing already measured, and running the same spec again skips it.
A trial that raises is recorded as failed with its error; the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from axlab.core.data import align_labels
from axlab.core.errors import AxlabError
from axlab.core.measure import hardware_info
from axlab.core.progress import Progress, Stopped, as_progress
from axlab.core.recipe import describe_recipe
from axlab.store.variants import Variant, VariantStore
from axlab.sweep.log import SweepLog
from axlab.sweep.pareto import choose, pareto_mask
from axlab.sweep.session import ray_session
from axlab.sweep.spec import SweepSpec
from axlab.sweep.trial import plan, run_trial

__all__ = ["run", "load", "SweepResult", "ray_session", "BACKENDS"]

log = logging.getLogger(__name__)

BACKENDS = ("ray", "sequential")
_BASES: dict = {}                        # in a worker process: object id -> unpacked base (model, tokenizer, splits)


# ----------------------------------------------------------------------------- Ray

def _remote_trial(box: list, trial: dict, settings: dict, fn: Callable) -> dict:
    """Runs in a Ray worker: unpack the base once per worker process, then run the trial."""
    import ray
    ref = box[0]
    key = ref.hex()
    if key not in _BASES:
        _BASES.clear()                   # one sweep's base at a time per worker
        _BASES[key] = ray.get(ref)
    base = _BASES[key]
    out = fn(base["model"], base["tokenizer"], base["splits"], trial, settings)
    out.setdefault("hardware", hardware_info())
    return out


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


# ----------------------------------------------------------------------------- result

@dataclass
class SweepResult:
    """A sweep's trials as recorded (this run's and earlier runs' of the same spec)."""

    spec: SweepSpec
    sweep_id: str
    workspace: str
    trials: list = field(default_factory=list)       # log rows with their measurements
    ran: list = field(default_factory=list)          # keys of the trials run this time
    skipped: list = field(default_factory=list)      # keys already measured by an earlier run
    stopped: bool = False
    backend: str = "ray"
    workers: int = 1
    timings: dict = field(default_factory=dict)      # plan_s, start_s (Ray up + base in the object store), run_s

    def table(self) -> pd.DataFrame:
        return trials_table(self.trials, self.spec)

    def front(self) -> pd.DataFrame:
        df = self.table()
        return df[df.pareto] if len(df) else df

    def chosen(self) -> dict | None:
        df = self.table()
        hit = df[df.chosen] if len(df) else df
        return hit.iloc[0].to_dict() if len(hit) else None

    @property
    def counts(self) -> dict:
        s = [t["status"] for t in self.trials]
        return {"ok": s.count("ok"), "failed": s.count("failed"), "total": len(self.spec.trials())}

    def to_dict(self) -> dict:
        df = self.table()
        rows = df.drop(columns=["steps"], errors="ignore").to_dict(orient="records") if len(df) else []
        return {"sweep_id": self.sweep_id, "workspace": self.workspace, "spec": self.spec.to_dict(),
                "counts": self.counts, "stopped": self.stopped, "ran": len(self.ran), "skipped": len(self.skipped),
                "backend": self.backend, "workers": self.workers, "timings": self.timings,
                "chosen": self.chosen(), "trials": rows}


TABLE_COLUMNS = ["index", "label", "status", "val_accuracy", "val_loss", "accuracy", "macro_f1", "latency_b1_ms",
                 "latency_b32_ms", "size_bytes", "size_mb", "recipe", "seconds", "worker", "error", "key",
                 "variant_id", "pareto", "chosen", "steps"]


def trials_table(trials: list[dict], spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: the recipe in words, validation and test measurements, front and choice."""
    rows = []
    for t in trials:
        m = t.get("measurements") or {}
        v = m.get("validation") or {}
        size = m.get("size_bytes")
        rows.append({"index": t["index"], "label": t["label"], "status": t["status"],
                     "val_accuracy": v.get("accuracy"), "val_loss": v.get("loss"), "accuracy": m.get("accuracy"),
                     "macro_f1": m.get("macro_f1"), "latency_b1_ms": m.get("latency_b1_ms"),
                     "latency_b32_ms": m.get("latency_b32_ms"), "size_bytes": size,
                     "size_mb": size / 1e6 if size else None, "recipe": describe_recipe(t["recipe"]),
                     "seconds": (t.get("seconds") or {}).get("total"), "worker": t.get("worker", ""),
                     "error": t.get("error", ""), "key": t["key"], "variant_id": t.get("variant_id", ""),
                     "steps": t["recipe"]})
    df = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c not in ("pareto", "chosen")])
    for c in ("val_accuracy", "val_loss", "accuracy", "macro_f1", "latency_b1_ms", "latency_b32_ms", "size_bytes",
              "size_mb", "seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    ok = (df.status == "ok").to_numpy()
    front = pareto_mask(df, spec.objectives) & ok
    df["pareto"] = front
    df["chosen"] = False
    base = df[(df.label == "base") & ok]
    base_acc = float(base.val_accuracy.iloc[0]) if len(base) and pd.notna(base.val_accuracy.iloc[0]) else None
    pick = choose(df[ok], spec.objectives, base_acc, float(spec.max_accuracy_drop))
    if pick is not None:
        df.loc[pick, "chosen"] = True
    return df[TABLE_COLUMNS].reset_index(drop=True)


def _with_measurements(rows: list[dict], store: VariantStore) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        if r["status"] == "ok":
            try:
                r["measurements"] = store.get(r["variant_id"]).measurements
            except AxlabError:           # the variant was deleted since: the trial counts as not run
                continue
        out.append(r)
    return out


def load(spec: SweepSpec, *, workspace: str = "default", store: VariantStore | None = None) -> SweepResult:
    """What is recorded so far for ``spec`` (the Sweep page polls this while a sweep runs)."""
    store = store or VariantStore()
    rows = SweepLog(store.path).trials(spec.sweep_id, workspace)
    return SweepResult(spec=spec, sweep_id=spec.sweep_id, workspace=workspace,
                       trials=_with_measurements(rows, store))


# ----------------------------------------------------------------------------- run

def run(spec: SweepSpec | dict, *, backend: str = "ray", address: str | None = None, workers: int | None = None,
        workspace: str = "default", store: VariantStore | None = None, bundle=None, splits=None,
        progress: Progress = None, on_update: Callable[[dict], None] | None = None,
        trial_fn: Callable = run_trial, max_retries: int = 2) -> SweepResult:
    """Run the spec's trials, skipping those already measured for it, and record each as it finishes.

    ``backend``: ``"ray"`` (local with ``workers`` CPUs, default all cores; or the cluster
    at ``address`` / ``RAY_ADDRESS``) or ``"sequential"`` (this process, same trial
    function and results). ``bundle`` / ``splits``: the loaded base and data (default:
    loaded from the spec). ``progress``: None (tqdm), False, or ``fn(done, total,
    message)``; raising :class:`~axlab.core.progress.Stopped` from it stops the sweep
    (finished trials are kept; the result has ``stopped=True``). ``on_update(state)``
    gets ``{done, failed, running, total, front}`` after every change. ``trial_fn`` is
    :func:`~axlab.sweep.trial.run_trial` unless a test injects faults.
    """
    spec = SweepSpec.from_dict(spec) if isinstance(spec, dict) else spec
    if backend not in BACKENDS:
        raise AxlabError(f"Unknown sweep backend '{backend}'.", f"Use one of: {', '.join(BACKENDS)}.")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise AxlabError(f"workers must be a positive integer, not {workers!r}.", "Pass e.g. workers=2.")
    if bundle is None:
        from axlab.core.loading import load_model
        bundle = load_model(spec.model)
    if splits is None:
        from axlab.core.data import load_dataset
        splits = load_dataset(spec.dataset, seed=spec.data_seed)
    splits = align_labels(splits, bundle.model)      # labels matched to the model's outputs by name, once
    store = store or VariantStore()
    timings: dict = {}
    with contextlib.ExitStack() as stack:
        n_cpus = 1
        if backend == "ray":             # up before planning, so ablation importance runs on it too
            t0 = time.perf_counter()
            n_cpus = stack.enter_context(ray_session(address, workers))
            timings["ray_init_s"] = time.perf_counter() - t0
        return _run(spec, backend, n_cpus, workspace, store, bundle, splits, progress, on_update, trial_fn,
                    max_retries, timings)


def _run(spec, backend, n_cpus, workspace, store, bundle, splits, progress, on_update, trial_fn, max_retries,
         timings) -> SweepResult:
    slog = SweepLog(store.path)
    sid, settings = spec.sweep_id, spec.trial_settings()
    t0 = time.perf_counter()
    ablation = None
    if backend == "ray":
        from axlab.sweep.ablation import ray_head_ablation

        def ablation(model, tokenizer, split, progress=False):
            return ray_head_ablation(model, tokenizer, split, progress=progress).loss_increase
    items = plan(spec, bundle, splits, ablation=ablation)
    timings["plan_s"] = time.perf_counter() - t0
    slog.begin(sid, workspace, spec.name, spec.to_dict())
    done_rows = {r["key"]: r for r in _with_measurements(slog.trials(sid, workspace), store) if r["status"] == "ok"}
    todo = [t for t in items if t["key"] not in done_rows]
    result = SweepResult(spec=spec, sweep_id=sid, workspace=workspace, skipped=[t["key"] for t in items
                                                                              if t["key"] in done_rows],
                         backend=backend, timings=timings)
    live = list(done_rows.values())      # what the front is computed on, kept here (not re-read per trial)
    timings["driver_record_s"] = 0.0
    bar = as_progress(progress, total=len(items), desc=f"sweep {sid[:6]}")
    state = {"done": len(done_rows), "failed": 0, "running": 0, "total": len(items), "front": 0}
    prefix = spec.name or f"sweep-{sid[:6]}"

    def record(item: dict, out: dict | None, error: str | None) -> None:
        t = time.perf_counter()
        if error is None:
            m = dict(out["measurements"])
            m["sweep"] = {"id": sid, "trial": item["key"], "choices": item["choices"]}
            v = store.add(Variant(name=f"{prefix}-{item['label']}", base=spec.model, dataset=spec.dataset,
                                  recipe=out["recipe"], measurements=m, hardware=out.get("hardware") or {},
                                  workspace=workspace, notes=f"sweep {sid} trial {item['key']}"))
            slog.record(sid, workspace, item, "ok", recipe=out["recipe"], variant_id=v.id, seconds=out["seconds"],
                        worker=out.get("worker", ""))
            state["done"] += 1
            live.append({**item, "status": "ok", "recipe": out["recipe"], "measurements": m})
        else:
            slog.record(sid, workspace, item, "failed", error=error)
            state["failed"] += 1
            log.warning("sweep %s: trial %s failed: %s", sid, item["label"], error)
        result.ran.append(item["key"])
        state["front"] = int(trials_table(live, spec).pareto.sum())
        timings["driver_record_s"] += time.perf_counter() - t
        notify(1)

    def notify(n: int = 0) -> None:
        msg = f"done {state['done']} / running {state['running']} / failed {state['failed']} / front {state['front']}"
        if on_update is not None:
            on_update(dict(state))
        bar.update(n, msg)               # a Stop button's callback raises Stopped here

    try:
        notify(len(done_rows))
        t1 = time.perf_counter()
        if backend == "sequential" or not todo:
            result.workers = 1
            _run_sequential(todo, bundle, splits, settings, trial_fn, record, notify, state)
        else:
            _run_ray(todo, bundle, splits, settings, trial_fn, record, notify, state, n_cpus, max_retries, result)
        timings["run_s"] = time.perf_counter() - t1
        slog.set_state(sid, workspace, "finished")
    except Stopped:
        result.stopped = True
        slog.set_state(sid, workspace, "stopped")
    except BaseException:
        slog.set_state(sid, workspace, "interrupted")
        raise
    finally:
        bar.close()
    final = load(spec, workspace=workspace, store=store)
    result.trials = final.trials
    return result


def _run_sequential(todo, bundle, splits, settings, trial_fn, record, notify, state) -> None:
    import torch
    threads = torch.get_num_threads()
    try:
        for item in todo:
            state["running"] = 1
            notify()
            try:
                out = trial_fn(bundle.model, bundle.tokenizer, splits, item, settings)
                out.setdefault("hardware", hardware_info())
            except Exception as e:  # noqa: BLE001  (a failed trial is recorded; the sweep goes on)
                log.debug("trial %s failed:\n%s", item["label"], traceback.format_exc())
                state["running"] = 0
                record(item, None, _error_text(e))
            else:
                state["running"] = 0
                record(item, out, None)
    finally:
        state["running"] = 0
        torch.set_num_threads(threads)


def _run_ray(todo, bundle, splits, settings, trial_fn, record, notify, state, n_cpus, max_retries, result) -> None:
    import ray
    t0 = time.perf_counter()
    result.workers = n_cpus
    box = [ray.put({"model": bundle.model, "tokenizer": bundle.tokenizer, "splits": splits})]
    task = ray.remote(num_cpus=1, max_retries=max_retries)(_remote_trial)
    pending = {task.remote(box, item, settings, trial_fn): item for item in todo}
    result.timings["put_submit_s"] = time.perf_counter() - t0
    try:
        while pending:
            state["running"] = min(len(pending), n_cpus)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if not ready:
                notify()                 # lets a Stop button's callback raise Stopped
                continue
            ref = ready[0]
            item = pending.pop(ref)
            state["running"] = min(len(pending), n_cpus)
            try:
                out = ray.get(ref)
            except Exception as e:  # noqa: BLE001  (task error or worker lost after retries: recorded)
                record(item, None, _error_text(e))
            else:
                record(item, out, None)
    finally:
        state["running"] = 0
        for ref in pending:              # stopped or interrupted: do not leave work on a cluster
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001  (already finished or gone)
                pass
