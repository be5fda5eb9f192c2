"""Progress reporting without a UI dependency.

Long operations accept ``progress``: ``None`` (a tqdm bar on stderr, quiet when not a
terminal), ``False`` (silent), or a callable ``fn(done: int, total: int, message: str)``
which the app turns into a Streamlit progress bar. Raising :class:`Stopped` from the
callback stops the operation cleanly (the search returns what it has).
"""

from __future__ import annotations

import sys
from typing import Callable, Union

__all__ = ["Progress", "ProgressBar", "as_progress", "Stopped"]

Progress = Union[None, bool, Callable[[int, int, str], None]]


class Stopped(Exception):
    """Raised by a progress callback to stop a long operation."""


class ProgressBar:
    def __init__(self, callback, total: int, desc: str):
        self.callback, self.total, self.desc, self.done = callback, total, desc, 0
        self._tqdm = None
        if callback is None:
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=total, desc=desc, leave=False, disable=not (sys.stderr.isatty() or "ipykernel" in sys.modules))

    def update(self, n: int = 1, message: str | None = None) -> None:
        self.done += n
        if self._tqdm is not None:
            self._tqdm.update(n)
            if message:
                self._tqdm.set_postfix_str(message, refresh=False)
        elif self.callback:
            self.callback(self.done, self.total, message or self.desc)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def as_progress(progress: Progress, total: int, desc: str = "") -> ProgressBar:
    if progress is False:
        return ProgressBar(False, total, desc)
    return ProgressBar(progress if callable(progress) else None, total, desc)
