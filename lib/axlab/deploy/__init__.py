"""Deploy: what leaves axlab. The exported variant folder, ONNX (+ int8) with checked
parity, the comparison table and Pareto front, and the self-contained report."""
