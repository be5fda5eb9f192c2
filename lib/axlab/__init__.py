"""axlab: make a fine-tuned transformer smaller, faster and more accurate on one task."""

import logging

from .attention import AttentionControl, capture_attention, use_axlab_attention
from .data import Split, Splits, load_dataset
from .errors import AxlabError, DataError, ExportError, ModelLoadError, UnsupportedModelError
from .loading import ModelBundle, load_model
from .measure import evaluate, measure, predict_logits, size_report

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["AttentionControl", "capture_attention", "use_axlab_attention", "Split", "Splits", "load_dataset",
           "AxlabError", "DataError", "ExportError", "ModelLoadError", "UnsupportedModelError", "ModelBundle",
           "load_model", "evaluate", "measure", "predict_logits", "size_report"]
