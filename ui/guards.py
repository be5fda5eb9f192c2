"""Warnings before degenerate results: a recipe that removes every head or every block."""

from __future__ import annotations

__all__ = ["removed_heads", "degenerate"]


def removed_heads(recipe: list) -> dict[int, set[int]]:
    """Heads removed by all of ``recipe``'s prune_heads steps, per layer (original head ids)."""
    out: dict[int, set[int]] = {}
    for step in recipe:
        if step.get("op") == "prune_heads":
            for layer, heads in ((step.get("params") or {}).get("heads") or {}).items():
                out.setdefault(int(layer), set()).update(int(h) for h in heads)
    return out


def degenerate(recipe: list, n_layers: int, n_heads: int, modality: str = "text") -> str | None:
    """Why ``recipe`` would leave a model that cannot read its input (None when it does not)."""
    heads = removed_heads(recipe)
    total = n_layers * n_heads
    n_removed = sum(len(h) for h in heads.values())
    dropped = set()
    for step in recipe:
        if step.get("op") == "drop_layers":
            dropped.update(int(x) for x in (step.get("params") or {}).get("layers") or [])
    unit, whole = ("patch", "image") if modality == "image" else ("word", "text")
    if len(dropped) >= n_layers:
        return (f"This removes all {n_layers} blocks. What is left is the embedding layer and the classifier: "
                f"the classifier reads the [CLS] position, which then carries no {unit} of the {whole}, so the model "
                "gives the same answer for every input.")
    if n_removed >= total:
        return (f"This removes **all {total} attention heads**. Attention is the only way {unit}{'es' if unit == 'patch' else 's'} reach each "
                f"other, and the classifier reads the [CLS] position: with no head left, it never sees a {unit} of "
                f"the {whole}, so the model gives **the same answer for every input** (its accuracy becomes the "
                "share of the most common label). It can be useful as a floor to compare against, not as a "
                "model.")
    return None
