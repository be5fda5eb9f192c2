"""axlab: make a fine-tuned transformer smaller, faster and more accurate on one task.

The public names below are imported lazily, so ``import axlab`` (and ``axlab.errors``)
stays cheap until torch or transformers is really needed.
"""

import importlib
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

_LAZY = {
    "AttentionControl": "attention", "capture_attention": "attention", "use_axlab_attention": "attention",
    "Split": "data", "Splits": "data", "load_dataset": "data",
    "AxlabError": "errors", "DataError": "errors", "ExportError": "errors", "ModelLoadError": "errors",
    "UnsupportedModelError": "errors",
    "ModelBundle": "loading", "load_model": "loading",
    "evaluate": "measure", "measure": "measure", "predict_logits": "measure", "size_report": "measure",
    "apply_recipe": "variants", "Step": "variants", "Variant": "variants", "VariantStore": "variants",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'axlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
