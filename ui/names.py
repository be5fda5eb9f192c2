"""Default variant names that say what was done, and a name box that follows the settings.

``step_name(step, n_total_heads)`` names one recipe step (``heads-40% (29 of 72)``,
``hand-3-heads``, ``gpfq4-g64``, ``int8``); ``unique(name, taken)`` appends ``-2``, ``-3``
... until the name is free in the workspace. ``name_box`` is the "Variant name" text box:
its text follows the page's settings (the default name changes when they change) until the
user types a name of their own, which is then kept.
"""

from __future__ import annotations

__all__ = ["step_name", "recipe_name", "unique", "name_box", "budget_name", "hand_name"]


def _pct(x: float) -> str:
    return f"{int(round(100 * float(x)))}%"


def budget_name(fraction: float, n_removed: int, n_total: int) -> str:
    """``heads-40% (29 of 72)``: the fraction asked for and the heads it removes."""
    return f"heads-{_pct(fraction)} ({n_removed} of {n_total})"


def hand_name(n_removed: int, n_total: int | None = None) -> str:
    """``hand-3-heads`` (``hand-all-72-heads`` when every head goes)."""
    if n_total is not None and n_removed == n_total:
        return f"hand-all-{n_total}-heads"
    return f"hand-{n_removed}-head{'' if n_removed == 1 else 's'}"


def step_name(step: dict, n_total_heads: int | None = None) -> str:
    """A short name for one recipe step, from its operation and parameters."""
    op, p = step.get("op", "step"), step.get("params", {}) or {}
    if op == "prune_heads":
        n = sum(len(v) for v in (p.get("heads") or {}).values())
        return f"heads-{n}" + (f"-of-{n_total_heads}" if n_total_heads else "")
    if op == "unstructured":
        return f"sparse-{_pct(p.get('sparsity', 0))}-{p.get('criterion', 'magnitude')}"
    if op == "quantize_int8":
        return "int8" + ("-emb" if p.get("embeddings") else "")
    if op in ("quantize_rtn", "quantize_gpfq", "quantize_gptq"):
        kind = op.removeprefix("quantize_")
        bits = f"{p['avg_bits']:g}avg" if p.get("avg_bits") is not None else str(p.get("bits", 4))
        name = f"{kind}{bits}"
        if p.get("group_size"):
            name += f"-g{p['group_size']}"
        if op == "quantize_gpfq" and p.get("sparsity"):
            name += f"-sparse{p['sparsity']:g}"
        if p.get("embeddings"):
            name += "-emb"
        return name
    if op == "prune_ffn":
        return f"ffn-{sum(len(v) for v in (p.get('neurons') or {}).values())}"
    if op == "drop_layers":
        return f"drop-{len(p.get('layers') or [])}-layers"
    if op == "hard_attention":
        return "hard-attn"
    if op == "distill":
        return "distilled"
    return op.replace("_", "-")


def recipe_name(recipe: list, n_total_heads: int | None = None) -> str:
    """A name for a whole recipe: its steps' names joined by ``+`` (``base`` for none)."""
    return "+".join(step_name(s, n_total_heads) for s in recipe) or "base"


def unique(name: str, taken) -> str:
    """``name``, or ``name-2``, ``name-3``, ... : the first one not in ``taken``."""
    taken = set(taken)
    name = name.strip() or "variant"
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def name_box(default: str, key: str, taken=(), label: str = "Variant name") -> str:
    """A text box holding ``default`` (made unique among ``taken``) until the user types their own name.

    The box is keyed by ``key`` (one per kind of variant on a page); ``<key>__auto``
    remembers the last default written into it, so a changed setting replaces the text
    only while it is still the page's own suggestion.
    """
    import streamlit as st

    ss = st.session_state
    suggestion = unique(default, taken)
    auto_key = f"{key}__auto"
    current = ss.get(key)
    if current is None or current == ss.get(auto_key) or not str(current).strip():
        ss[key] = suggestion
    ss[auto_key] = suggestion
    own = ss[key] != suggestion
    return st.text_input(label, key=key,
                         help="Named after what the settings do; type your own name to keep it."
                              + (" (your own name)" if own else ""))
