"""Long work (importance, search, GPFQ, measuring) in a background thread.

A job belongs to one workspace and has a key (what it computes). The page that starts it
waits for it with a progress bar; if the user goes to another page meanwhile, the job
keeps running and its result is there when they come back (other pages stay usable).
A Stop button sets a flag that the progress callback turns into ``axlab.core.progress.Stopped``.

One Stop: Streamlit's header Stop (or leaving the page) ends only the page's script run,
never the job. The job stays in the registry with its progress; the next run of its page
shows it again (progress, elapsed and remaining time, its own Stop button), and every
page's sidebar lists the workspace's running jobs with a Stop button each
(:func:`running`). Progress text carries elapsed time and an estimate of the time left,
from the job's own progress (:func:`eta_text`).
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

__all__ = ["Job", "start", "get", "wait", "collect", "run_with_progress", "forget", "running", "fmt_seconds",
           "status_text"]

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
    ended: float | None = None
    phase_started: float | None = None  # when the current count began (a job may count several phases)
    phase_done0: int = 0

    def progress(self, done: int, total: int, message: str = "") -> None:
        """The ``progress`` callback handed to the library."""
        now = time.time()
        if self.phase_started is None or total != self.total or done < self.done:
            self.phase_started, self.phase_done0 = now, done      # a new count: estimate from here
        self.done, self.total, self.message = done, total, message
        if self.stop_requested:
            from axlab.core.progress import Stopped
            raise Stopped()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    @property
    def remaining(self) -> float | None:
        """Seconds left at the current rate of this count (None until two updates of it have come)."""
        if not self.total or self.phase_started is None:
            return None
        done = self.done - self.phase_done0
        spent = time.time() - self.phase_started
        if done <= 0 or spent <= 0.5:
            return None
        return max(0.0, spent / done * (self.total - self.done))


def fmt_seconds(s: float | None) -> str:
    """``8 s``, ``2 min 05 s``, ``1 h 03 min``."""
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_text(job: Job) -> str:
    """``Label: message (12/150) - 1 min 05 s elapsed, about 6 min 10 s left``."""
    if job.finished:
        how = "stopped" if job.stop_requested else ("failed" if job.error is not None else "done")
        return f"{job.label}: {how} after {fmt_seconds(job.elapsed)}"
    count = f" ({job.done}/{job.total})" if job.total else ""
    left = job.remaining
    if job.total and job.done >= job.total:
        eta = ", finishing..."
    elif left is not None:
        eta = f", about {fmt_seconds(left)} left"
    else:
        eta = ", estimating the time left..." if job.total else ""
    msg = f": {job.message}" if job.message else ""
    return f"{job.label}{msg}{count} - {fmt_seconds(job.elapsed)} elapsed{eta}"


@st.cache_resource
def _registry() -> dict:
    return {"lock": threading.Lock(), "jobs": {}}


def get(workspace: str, key: str) -> Job | None:
    return _registry()["jobs"].get((workspace, key))


def forget(workspace: str, key: str) -> None:
    _registry()["jobs"].pop((workspace, key), None)


def running(workspace: str) -> list[Job]:
    """The workspace's jobs that have not finished yet (for the sidebar)."""
    return [j for (ws, _), j in list(_registry()["jobs"].items()) if ws == workspace and not j.finished]


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
            job.ended = time.time()
            job.finished = True

    threading.Thread(target=target, name=f"axlab-{label}", daemon=True).start()
    return job


def wait(job: Job, stop_button: bool = True) -> Job:
    """Show progress (count, elapsed, time left) and a Stop button until ``job`` finishes.

    The page's script waits; the job does the work. If this run ends early (header Stop,
    another page), the job goes on and the next run of the page comes back here.
    """
    bar = st.progress(job.fraction, text=status_text(job))
    stop_slot = st.empty()
    if stop_button and not job.finished:
        if stop_slot.button("Stop", key=f"stop-{job.key}-{job.uid}", icon=":material/stop_circle:",
                            help="Stops the job and keeps what it has found so far (where it can)."):
            job.stop_requested = True
    while not job.finished:
        bar.progress(job.fraction, text=status_text(job))
        time.sleep(0.25)
    stop_slot.empty()
    bar.progress(1.0, text=status_text(job))
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
