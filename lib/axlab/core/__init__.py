"""Core: what every other part of axlab builds on.

Errors, paths and progress; the per-architecture registry and the one attention
function (gates, top-k, capture); physical surgery on heads and FFN neurons; loading
models and data; measuring; recipes (the op table); the quantized modules and the
variant folder format (both needed to load a saved variant); training a classifier.
Nothing here imports from the packages above it (store, analysis, compress, deploy, cli).
"""
