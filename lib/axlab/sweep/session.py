"""One Ray session per sweep: local by default, or an existing cluster; always shut down.

Local: ``ray.init`` with as many CPUs as asked (default: all cores), no dashboard, and
token authentication off (``RAY_AUTH_MODE=disabled``) because nothing listens beyond this
machine. A cluster: ``address`` or ``RAY_ADDRESS``; it keeps its own authentication.
A session the caller already started is reused and left running.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from axlab.core.errors import AxlabError

__all__ = ["ray_session"]

_SESSION_LOCK = threading.Lock()         # one local Ray session per process at a time
_AUTH_SET_BY_US = False                  # RAY_AUTH_MODE=disabled was set here for a local Ray


@contextmanager
def ray_session(address: str | None = None, workers: int | None = None):
    """A Ray session for one sweep; yields the number of CPUs it can use.

    Reuses a session the caller already started (and leaves it running); otherwise
    attaches to ``address`` / ``RAY_ADDRESS`` or starts a local one, and always shuts it
    down at the end, so no Ray process is left behind.
    """
    try:
        import ray
    except ImportError:
        raise AxlabError("Sweeps on Ray need the ray package.",
                         "pip install ray==2.60.0 (see requirements.txt), or run with backend='sequential'.") from None
    global _AUTH_SET_BY_US
    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", 1))
        return
    if not _SESSION_LOCK.acquire(blocking=False):
        raise AxlabError("Another sweep is already running Ray in this process.",
                         "Wait for it to finish (or stop it), then start this one.")
    try:
        address = address or os.environ.get("RAY_ADDRESS") or None
        quiet = {"log_to_driver": False, "configure_logging": False}
        if address:
            if _AUTH_SET_BY_US and os.environ.get("RAY_AUTH_MODE") == "disabled":
                os.environ.pop("RAY_AUTH_MODE")      # a cluster keeps its own authentication
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise AxlabError(f"Could not attach to the Ray cluster at '{address}': {str(e).splitlines()[0]}",
                                 "Check the address (ray://host:10001 or host:6379) and that the cluster runs "
                                 "ray==2.60.0 and the same axlab, torch and transformers versions.") from None
        else:
            n = int(workers or os.cpu_count() or 1)
            if n < 1:
                raise AxlabError(f"workers must be at least 1, not {workers}.", "Pass workers=2 (or leave it out).")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")     # no usage report leaves this machine
            # Ray runs workers at nice 15 by default: on a machine shared with other programs they would get
            # far less CPU than the same trials run in this process (the sequential backend) at nice 0
            os.environ.setdefault("RAY_worker_niceness", "0")
            if "RAY_AUTH_MODE" not in os.environ:      # local only: nothing listens beyond this host
                os.environ["RAY_AUTH_MODE"] = "disabled"
                _AUTH_SET_BY_US = True
            ray.init(num_cpus=n, include_dashboard=False, **quiet)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            yield min(cpus, int(workers)) if (workers and address) else cpus
        finally:
            ray.shutdown()
    finally:
        _SESSION_LOCK.release()
