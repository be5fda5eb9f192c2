"""Reading the Heads page's numbers: what the methods' agreement means, and the heads every method ranks low."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_agreement", "agreement_words", "low_in_all"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(float) if hasattr(x, "detach") else np.asarray(x, dtype=float)


def mean_agreement(table) -> float:
    """The mean Spearman correlation over the pairs of different methods."""
    z = table.to_numpy(dtype=float)
    off = z[~np.eye(len(z), dtype=bool)]
    return float(np.nanmean(off)) if off.size else float("nan")


def agreement_words(table) -> str:
    """What the agreement between importance methods means for choosing heads to remove."""
    rho = mean_agreement(table)
    names = list(table.columns)
    pairs = ", ".join(f"{a} vs {b}: {table.loc[a, b]:+.2f}" for i, a in enumerate(names) for b in names[i + 1:])
    if rho >= 0.7:
        verdict = ("**The methods agree** (mean ρ = {:+.2f}): the ranking is robust, and removing heads from the "
                   "bottom of it is a sound first step.")
    elif rho >= 0.3:
        verdict = ("**The methods partly agree** (mean ρ = {:+.2f}): they share the broad picture (which heads "
                   "matter a lot) but not the order of the many small ones. Trust the heads they all rank low "
                   "more than any single method's order.")
    elif rho > -0.3:
        verdict = ("**The methods barely agree** (mean ρ = {:+.2f}, where 1 = same order and 0 = unrelated). On a "
                   "model like this most heads each matter a little, so their order is mostly noise from the "
                   "examples used and from how 'importance' is defined (gradient at the full model vs. the loss "
                   "when a head is removed alone). Do not prune by one method's order alone: start with the heads "
                   "every method ranks low (below), and let the validation loss decide, as the AxFormer search on "
                   "the Prune page does for every removal.")
    else:
        verdict = ("**The methods disagree** (mean ρ = {:+.2f}): they rank heads in nearly opposite orders, so "
                   "no single ranking can be trusted; prune with the AxFormer search, which checks every removal "
                   "on validation data.")
    return verdict.format(rho) + f"  \nPairs: {pairs}."


def low_in_all(imps: dict, fraction: float = 0.25) -> list[tuple[int, int]]:
    """(layer, head) pairs in the lowest ``fraction`` of every method's ranking (removed heads left out)."""
    if not imps:
        return []
    sets = []
    for imp in imps.values():
        z = _np(imp)
        layer, head = np.nonzero(np.isfinite(z))
        scores = z[layer, head]
        k = max(1, int(round(fraction * len(scores))))
        order = np.argsort(scores, kind="stable")[:k]
        sets.append({(int(layer[i]), int(head[i])) for i in order})
    return sorted(set.intersection(*sets))
