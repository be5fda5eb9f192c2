"""axlab: make a fine-tuned transformer smaller, faster and more accurate on one task.

The package is cut by the stages of the data flow (see docs/ARCHITECTURE.md); a lower
layer never imports a higher one::

    core      load models and data, measure, the attention function, surgery, recipes
    store     the variant store (SQLite) and the analysis cache
    analysis  attention maps, head statistics, head importance, attributions, figures
    compress  pruning, AxFormer, hard attention, distillation, quantization, GPFQ
    deploy    export (folder, ONNX, int8), comparison table, report
    cli       the ``axlab`` command

The whole loop is also here at the top level, imported lazily so ``import axlab``
stays cheap until torch or transformers is really needed::

    bundle = axlab.load_model("default")
    splits = axlab.load_dataset("rotten_tomatoes")
    imp = axlab.head_importance(bundle.model, bundle.tokenizer, splits.validation)
    small = axlab.prune_heads(bundle.model, axlab.heads_by_budget(imp, 0.3))
    axlab.measure(small, bundle.tokenizer, splits.test)
    axlab.export_variant(small, bundle.tokenizer, "out/", base="default")
    axlab.load_variant("out/")
"""

import importlib
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

_LAZY = {
    # core: load, measure, the attention function, recipes
    "AttentionControl": "core.attention", "capture_attention": "core.attention",
    "use_axlab_attention": "core.attention",
    "Split": "core.data", "Splits": "core.data", "load_dataset": "core.data",
    "AxlabError": "core.errors", "DataError": "core.errors", "ExportError": "core.errors",
    "ModelLoadError": "core.errors", "UnsupportedModelError": "core.errors",
    "ModelBundle": "core.loading", "load_model": "core.loading", "load_variant": "core.loading",
    "evaluate": "core.measure", "measure": "core.measure", "predict_logits": "core.measure",
    "size_report": "core.measure", "latency": "core.measure",
    "prepare": "core.train", "train_classifier": "core.train",
    # store
    "Variant": "store.variants", "VariantStore": "store.variants",
    # analysis
    "attention_for": "analysis.attention_maps", "rollout": "analysis.attention_maps",
    "head_statistics": "analysis.head_stats",
    "head_importance": "analysis.importance", "rank_heads": "analysis.importance", "agreement": "analysis.importance",
    "token_attributions": "analysis.attributions",
    # compress (importing it registers every recipe op)
    "apply_recipe": "compress", "Step": "compress",
    "prune_heads": "compress.prune", "heads_by_budget": "compress.prune", "prune_ffn": "compress.prune",
    "ffn_by_budget": "compress.prune", "drop_layers": "compress.prune", "prune_vocab": "compress.prune",
    "axformer_search": ("compress.axformer", "search"), "SearchConfig": "compress.axformer",
    "hard_attention": ("compress.hard_attention", "hard_attention"),
    "distill": ("compress.distill", "distill"),
    "int8_dynamic": "compress.quantize", "rtn": "compress.quantize",
    "gpfq": ("compress.gpfq", "gpfq"), "GPFQConfig": "compress.gpfq",
    # deploy
    "export_variant": "deploy.export", "export_all": "deploy.export",
    "export_onnx": "deploy.onnx_export",
    "variants_table": "deploy.compare", "tradeoff_figure": "deploy.compare",
    "write_report": "deploy.report",
}
_PACKAGES = ("core", "store", "analysis", "compress", "deploy", "cli")
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        target = _LAZY[name]
        module, attr = target if isinstance(target, tuple) else (target, name)
        value = getattr(importlib.import_module(f"axlab.{module}"), attr)
        globals()[name] = value
        return value
    if name in _PACKAGES:
        return importlib.import_module(f"axlab.{name}")
    raise AttributeError(f"module 'axlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__ + list(_PACKAGES))
