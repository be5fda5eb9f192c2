"""Where axlab keeps its cache (built models, analysis results) and data (variant store).

``AXLAB_HOME`` overrides both; ``AXLAB_DATA`` overrides only the data directory (the
tests use a scratch variant store but share the cached default model). Otherwise the
platform's user cache and data directories are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_dir", "data_dir"]


def _home() -> Path | None:
    home = os.environ.get("AXLAB_HOME")
    return Path(home).expanduser() if home else None


def cache_dir(*parts: str) -> Path:
    root = _home() / "cache" if _home() else Path(platformdirs.user_cache_dir("axlab"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(*parts: str) -> Path:
    if os.environ.get("AXLAB_DATA"):
        root = Path(os.environ["AXLAB_DATA"]).expanduser()
    else:
        root = _home() / "data" if _home() else Path(platformdirs.user_data_dir("axlab"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
