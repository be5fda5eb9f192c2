"""Long work (importance, search, GPFQ, measuring) in a background thread.

A job belongs to one workspace and has a key (what it computes). The page that starts it
waits for it with a progress bar; if the user goes to another page meanwhile, the job
keeps running and its result is there when they come back (other pages stay usable).
A Stop button sets a flag that the progress callback turns into ``axlab.core.progress.Stopped``.
(axlab is imported lazily here and in ui.state: importing it loads torch and transformers,
which the home page does not need for its first paint.)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

__all__ = ["Job", "start", "get", "wait", "collect", "run_with_progress", "forget"]

log = logging.getLogger(__name__)


@dataclass
class Job:
    key: str
    label: str
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None
    error: BaseException | None = None
    finished: bool = False
    stop_requested: bool = False
    started: float = field(default_factory=time.time)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def progress(self, done: int, total: int, message: str = "") -> None:
        """The ``progress`` callback handed to the library."""
        self.done, self.total, self.message = done, total, message
        if self.stop_requested:
            from axlab.core.progress import Stopped
            raise Stopped()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@st.cache_resource
def _registry() -> dict:
    return {"lock": threading.Lock(), "jobs": {}}


def get(workspace: str, key: str) -> Job | None:
    return _registry()["jobs"].get((workspace, key))


def forget(workspace: str, key: str) -> None:
    _registry()["jobs"].pop((workspace, key), None)


def start(workspace: str, key: str, label: str, fn: Callable[[Callable], Any]) -> Job:
    """Run ``fn(progress_callback)`` in a thread, unless the same job is already running."""
    reg = _registry()
    with reg["lock"]:
        job = reg["jobs"].get((workspace, key))
        if job is not None and not job.finished:
            return job
        job = Job(key=key, label=label)
        reg["jobs"][(workspace, key)] = job

    def target():
        try:
            job.result = fn(job.progress)
        except BaseException as e:  # noqa: BLE001  (shown to the user by the page)
            job.error = e
            if type(e).__name__ != "Stopped":
                log.exception("job %s failed", label)
        finally:
            job.finished = True

    threading.Thread(target=target, name=f"axlab-{label}", daemon=True).start()
    return job


def wait(job: Job, stop_button: bool = True) -> Job:
    """Show a progress bar until ``job`` finishes (the page's script waits; the job does the work)."""
    bar = st.progress(job.fraction, text=f"{job.label}: starting...")
    stop_slot = st.empty()
    if stop_button and not job.finished:
        if stop_slot.button("Stop", key=f"stop-{job.key}-{job.uid}", icon=":material/stop_circle:"):
            job.stop_requested = True
    while not job.finished:
        text = f"{job.label}: {job.message} ({job.done}/{job.total})" if job.total else f"{job.label}..."
        bar.progress(job.fraction, text=text)
        time.sleep(0.25)
    stop_slot.empty()
    bar.progress(1.0, text=f"{job.label}: {'stopped' if job.stop_requested else 'done'} after "
                 f"{time.time() - job.started:.1f} s")
    return job


def collect(workspace: str, slot: str):
    """If a job runs (or ran) in ``slot``: wait for it with a progress bar and return its result.

    Returns None when there is no job. Raises the job's error (``Stopped`` if stopped).
    Pages call this on every run, so a job started before a rerun or a page change is
    picked up again.
    """
    job = get(workspace, slot)
    if job is None:
        return None
    wait(job)
    forget(workspace, slot)
    if job.error is not None:
        raise job.error
    return job.result


def run_with_progress(workspace: str, slot: str, label: str, fn: Callable[[Callable], Any]):
    """Start (or join) a job and wait for it; returns its result or raises its error."""
    start(workspace, slot, label, fn)
    return collect(workspace, slot)
