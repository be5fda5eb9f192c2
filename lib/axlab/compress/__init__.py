"""Compress: transforms that make a new, smaller or faster model from a model.

Each public transform copies its input (it never mutates it) and is also a recipe op,
registered here so ``apply_recipe`` can replay it:

=================  ===============================================================
module             ops
=================  ===============================================================
prune              prune_heads, prune_ffn, drop_layers, prune_vocab, unstructured
axformer           (search) -> a recipe of prune / hard_attention steps
hard_attention     hard_attention (top-k per layer)
distill            distill
quantize           quantize_int8, quantize_rtn
gpfq               quantize_gpfq
gptq               quantize_gptq (a reference peer for GPFQ)
=================  ===============================================================

Use :func:`apply_recipe` from here (or ``axlab.apply_recipe``): importing this package
registers every op.
"""

from axlab.compress import axformer, distill, gpfq, gptq, hard_attention, prune, quantize  # noqa: F401  (register ops)
from axlab.core.recipe import (
           TRANSFORMS,
           RecipeContext,
           Step,
           apply_recipe,
           apply_step,
           register_transform,
           validate_recipe,
)

__all__ = ["apply_recipe", "apply_step", "validate_recipe", "Step", "RecipeContext", "register_transform", "TRANSFORMS",
           "prune", "axformer", "hard_attention", "distill", "quantize", "gpfq", "gptq"]
