"""The ``axlab`` command line: ``axlab.cli.main`` parses; each stage adds its commands
from a sibling module (analysis, prune, quantize, export)."""

from axlab.cli.main import main

__all__ = ["main"]
