"""Analysis: look inside a model without changing it. Attention maps and rollout, head
statistics, head importance (gradient, ablation, captum), token attributions, and the
plotly figures for all of them."""
