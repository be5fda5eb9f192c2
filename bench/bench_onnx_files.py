"""ONNX files side by side on another machine: interleaved latency at batch 1 and 32, paired per round.

For a machine where the bench cannot run whole (no dataset, no student cache), e.g. a CPU with
AVX-VNNI: carry the .onnx files a full run wrote, the test texts already tokenized, and this script.

    # here: the test split tokenized with the model's tokenizer (needs axlab and the dataset)
    python bench/bench_onnx_files.py tokens --out /tmp/test_tok.npz
    # there: numpy, torch, onnxruntime and axlab's lib/ on PYTHONPATH
    PYTHONPATH=lib python bench/bench_onnx_files.py time --tokens test_tok.npz \\
        --file "ONNX Runtime dynamic int8=base_int8.onnx" --file "best=best.onnx" --out result.json

The first ``--file`` is the one the others are compared with. Each round draws its batches from the
test texts at their real lengths (padded to the batch's longest, as the bench does) and times every
file on them back to back, the starting file rotating; a file's latency is the median of its round
medians; a ratio is the base's round median over the file's, per round: its median, range and 95%
bootstrap interval (axlab.core.measure.paired_speedup). Batch 1 gets 3x the rounds of batch 32.
Results of 2026-12-01 (the chosen row of `results/latest.json` against ONNX Runtime dynamic int8 on
the device host's Intel Xeon with AVX-VNNI and AMX): `results/vnni_check*.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def make_tokens(out: Path, model: str = "default", dataset: str = "rotten_tomatoes", max_length: int = 128) -> dict:
    """The test split of ``dataset`` tokenized by ``model``'s tokenizer, padded to ``max_length``, in ``out``."""
    from axlab.core.data import load_dataset
    from axlab.core.loading import load_model
    tok = load_model(model).tokenizer
    if getattr(tok, "padding_side", "right") != "right":
        raise ValueError("the batches are cut to their longest row from the right: a right-padding tokenizer only")
    texts = list(load_dataset(dataset, seed=0).test.texts)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    np.savez_compressed(out, input_ids=enc["input_ids"].astype(np.int32),
                        attention_mask=enc["attention_mask"].astype(np.int8))
    return {"texts": len(texts), "mean_tokens": float(enc["attention_mask"].sum(1).mean())}


def time_files(files: dict, tokens: Path, rounds_b1: int, rounds_b32: int, runs: dict, threads: int,
               seed: int = 0) -> dict:
    """{"latency_ms": {bs: {name: median}}, "rounds_ms": ..., "vs_base": {bs: {name: ratio}}} for ``files``
    ({name: path}; the first is the base), timed interleaved on ``threads`` threads, each file run as the
    bench runs its ONNX Runtime rows (:func:`axlab.deploy.fused_onnx.fused_predictor`)."""
    from axlab.core.measure import paired_speedup
    from axlab.deploy.fused_onnx import fused_predictor
    d = np.load(tokens)
    ids, mask = d["input_ids"].astype(np.int64), d["attention_mask"].astype(np.int64)
    predictors = {name: fused_predictor(path, threads) for name, path in files.items()}

    def batch(ix):
        n = int(mask[ix].sum(1).max())
        return {"input_ids": ids[ix, :n], "attention_mask": mask[ix, :n]}

    names = list(predictors)
    per = {bs: {n: [] for n in names} for bs in (1, 32)}
    n_rounds = {1: rounds_b1, 32: rounds_b32}
    for r in range(max(n_rounds.values())):
        rng = np.random.default_rng(seed * 1000 + r)
        for bs in (b for b in (1, 32) if r < n_rounds[b]):
            batches = [batch(rng.choice(len(ids), bs, replace=False)) for _ in range(runs[bs] + 2)]
            for name in names[r % len(names):] + names[:r % len(names)]:
                times = []
                for i, b in enumerate(batches):
                    t0 = time.perf_counter()
                    predictors[name](b)
                    if i >= 2:                                      # two warm-up calls
                        times.append((time.perf_counter() - t0) * 1e3)
                per[bs][name].append(statistics.median(times))
    base = names[0]
    out = {"latency_ms": {}, "rounds_ms": per, "vs_base": {}}
    for bs in (1, 32):
        out["latency_ms"][bs] = {n: statistics.median(v) for n, v in per[bs].items()}
        out["vs_base"][bs] = {}
        for n in names[1:]:
            ps = paired_speedup(per[bs][base], per[bs][n])
            out["vs_base"][bs][n] = {"ratio_of_medians": out["latency_ms"][bs][base] / out["latency_ms"][bs][n],
                                     "paired_median": ps["median"], "range": ps["range"],
                                     "interval95": ps["interval"], "within_noise": ps["within_noise"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens", help="tokenize the test split (here, with axlab and the dataset)")
    t.add_argument("--out", required=True)
    t.add_argument("--model", default="default")
    t.add_argument("--dataset", default="rotten_tomatoes")
    m = sub.add_parser("time", help="time ONNX files interleaved (needs numpy, onnxruntime, lib/ on PYTHONPATH)")
    m.add_argument("--tokens", required=True)
    m.add_argument("--file", action="append", required=True, metavar="NAME=PATH",
                   help="an ONNX file (repeat; the first is the base the others are compared with)")
    m.add_argument("--rounds", type=int, default=15, help="rounds at batch 32 (batch 1: 3x)")
    m.add_argument("--runs-b1", type=int, default=30)
    m.add_argument("--runs-b32", type=int, default=4)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--out", default=None, help="JSON file for the result (default: printed only)")
    args = ap.parse_args(argv)
    if args.cmd == "tokens":
        sys.stdout.write(json.dumps(make_tokens(Path(args.out), args.model, args.dataset)) + "\n")
        return 0
    files = {}
    for spec in args.file:
        name, sep, path = spec.rpartition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"--file {spec!r}: write NAME=PATH with an existing .onnx file")
        files[name] = path
    if len(files) < 2:
        ap.error("give at least two --file: the base and one to compare with it")
    from axlab.core.measure import hardware_info
    from axlab.deploy.fused_onnx import int8_kernel_saturates
    res = time_files(files, Path(args.tokens), 3 * args.rounds, args.rounds,
                     {1: args.runs_b1, 32: args.runs_b32}, args.threads)
    res.update(files=files, threads=args.threads, hardware=hardware_info(),
               ort_int8_kernel_saturates=int8_kernel_saturates())
    text = json.dumps(res, indent=1, default=float)
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
