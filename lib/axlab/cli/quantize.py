"""``axlab quantize``: quantize a model (int8 dynamic, k-bit RTN, GPFQ) and measure it.

    axlab quantize default --method gpfq --bits 4 --json
    axlab quantize default --method rtn --bits 3 --group-size 64 --limit 500
    axlab quantize default --method gpfq --bits 3 --avg-bits 3.5 --save gpfq-mixed
    axlab quantize default --method gptq --bits 3          # the GPTQ reference, same scales and calibration
    axlab quantize default --method gpfq --bits 4 --pack-rest 4 --save small   # + int8 head, 4-bit word table
"""

from __future__ import annotations

import time

from axlab.cli.common import (add_model_args, data_notes, emit, load_model_and_data, measure_against_base,
                              positive_int, save_variant)

DEFAULT_BITS = 4
DEFAULT_CALIBRATION = 256

__all__ = ["add_commands", "recipe_from_args", "check_args"]


def check_args(args) -> None:
    """Refuse options that do not fit the method, before the model and data load. Fills the defaults."""
    from axlab.core.errors import AxlabError
    if args.method == "int8":
        given = [f for f, v in (("--bits", args.bits), ("--group-size", args.group_size),
                                ("--calibration", args.calibration), ("--avg-bits", args.avg_bits)) if v is not None]
        if given:
            raise AxlabError(f"{', '.join(given)} do(es) not apply to --method int8 (always 8-bit dynamic "
                             "quantization).", "Drop them, or use --method rtn / --method gpfq for k-bit weights.")
        return
    args.bits = DEFAULT_BITS if args.bits is None else args.bits
    if not 2 <= args.bits <= 8:
        raise AxlabError(f"--bits must be between 2 and 8, not {args.bits}.", "Use e.g. --bits 4.")
    if args.group_size is not None and args.group_size < 1:
        raise AxlabError(f"--group-size must be at least 1, not {args.group_size}.",
                         "Use e.g. --group-size 64, or leave it out for one scale per output channel.")
    if args.method == "rtn":
        given = [f for f, v in (("--calibration", args.calibration), ("--avg-bits", args.avg_bits)) if v is not None]
        if given:
            raise AxlabError(f"{', '.join(given)} only apply to --method gpfq / gptq.",
                             "Drop them, or use --method gpfq.")
        return
    if args.method == "gptq":
        given = [f for f, v in (("--avg-bits", args.avg_bits), ("--sparsity", args.sparsity or None)) if v is not None]
        if given:
            raise AxlabError(f"{', '.join(given)} only apply to --method gpfq.", "Drop them, or use --method gpfq.")
    args.calibration = DEFAULT_CALIBRATION if args.calibration is None else args.calibration
    if args.calibration < 1:
        raise AxlabError(f"--calibration must be a positive number of texts, not {args.calibration}.",
                         f"Use e.g. --calibration {DEFAULT_CALIBRATION} (texts drawn from the training split).")
    if args.avg_bits is not None and not min(args.candidates) <= args.avg_bits <= max(args.candidates):
        raise AxlabError(f"--avg-bits {args.avg_bits} is outside the candidate widths {args.candidates}.",
                         "Pick an average between the smallest and largest --candidates.")


def recipe_from_args(args) -> list[dict]:
    rest = getattr(args, "pack_rest", None)
    steps = _method_steps(args)
    if rest is not None:
        from axlab.compress import Step
        steps.append(Step("quantize_rest", embedding_bits=rest, position_bits=8))
    return steps


def _method_steps(args) -> list[dict]:
    from axlab.compress import Step
    from axlab.compress.gpfq import GPFQConfig
    if args.method == "int8":
        return [Step("quantize_int8", embeddings=args.embeddings)]
    if args.method == "rtn":
        return [Step("quantize_rtn", bits=args.bits, group_size=args.group_size, embeddings=args.embeddings,
                     scale_search=args.scale_search, outliers=args.outliers or 0.0)]
    if args.method == "gptq":
        return [Step("quantize_gptq", bits=args.bits, group_size=args.group_size, embeddings=args.embeddings,
                     n_calibration=args.calibration, outliers=args.outliers or 0.0)]
    params = dict(bits=args.bits, group_size=args.group_size, embeddings=args.embeddings,
                  n_calibration=args.calibration, sparsity=args.sparsity,
                  outliers=GPFQConfig.outliers if args.outliers is None else args.outliers,
                  refine_passes=0 if args.sparsity else args.refine_passes)
    if args.avg_bits is not None:
        params["avg_bits"] = args.avg_bits
        params["candidates"] = list(args.candidates)
    if args.no_scale_search:
        params["scale_grid"] = None
    if args.no_bias_correction:
        params["bias_correction"] = False
    return [Step("quantize_gpfq", **params)]


def cmd_quantize(args) -> None:
    from axlab.compress import apply_recipe
    from axlab.core.errors import AxlabError

    check_args(args)                                     # before anything slow
    recipe = recipe_from_args(args)
    bundle, splits = load_model_and_data(args)
    if args.method in ("gpfq", "gptq") and len(splits.train) == 0:
        raise AxlabError(f"{args.method.upper()} calibrates on the training split, and this data has none.",
                         "Give a training file (--train FILE) or use --method rtn / int8.")
    t0 = time.perf_counter()
    model = apply_recipe(bundle.model, recipe, tokenizer=bundle.tokenizer, splits=splits, progress=False)
    seconds = time.perf_counter() - t0
    split = splits[args.split].head(args.limit)
    base_m, m, compare = measure_against_base(bundle.model, model, bundle.tokenizer, split, args, args.split)
    out = {"model": args.model, "dataset": splits.name, "method": args.method,
           "bits": None if args.method == "int8" else args.bits, "recipe": recipe,
           "quantize_seconds": round(seconds, 2), **m, "baseline": base_m, "compare": compare,
           "notes": data_notes(splits) + list(m.get("notes") or [])}
    report = getattr(model, "axlab_gpfq_report", None)
    if report is not None:
        rows = report.layers
        out["gpfq"] = {"mean_rel_error": sum(r["rel_error"] for r in rows) / max(len(rows), 1),
                       "mean_rtn_rel_error": sum(r["rtn_rel_error"] for r in rows) / max(len(rows), 1),
                       "bits_per_layer": {r["name"]: r["bits"] for r in rows}, "n_tokens": report.n_tokens}
    vid = save_variant(args, splits, recipe, m, base_m)
    if vid:
        out["variant_id"] = vid
    emit(out, args.json)


def add_commands(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model (int8, k-bit RTN, GPFQ) and measure it")
    add_model_args(p)
    p.add_argument("--method", choices=["int8", "rtn", "gpfq", "gptq"], default="gpfq",
                   help="gptq: the GPTQ reference (Frantar et al.), same grid, scales and calibration as gpfq")
    p.add_argument("--bits", type=int, default=None, help=f"2..8 (rtn, gpfq; default {DEFAULT_BITS})")
    p.add_argument("--group-size", type=int, default=None, help="one scale per group of inputs (default per channel)")
    p.add_argument("--embeddings", action="store_true", help="also store the word embeddings in 8 bits per row")
    p.add_argument("--pack-rest", type=int, nargs="?", const=8, default=None, choices=[2, 3, 4, 5, 6, 8],
                   metavar="BITS",
                   help="also pack what the method leaves in fp32 for deployment: the pooler and classifier to "
                        "int8, the word table to BITS bits (default 8) unless already quantized, the position table "
                        "to 8 bits")
    p.add_argument("--scale-search", action="store_true", help="rtn: pick scales by weight MSE")
    p.add_argument("--calibration", type=int, default=None,
                   help=f"gpfq: calibration texts from the training split (default {DEFAULT_CALIBRATION})")
    p.add_argument("--sparsity", type=float, default=0.0, help="gpfq: soft threshold (in steps) for zeros")
    p.add_argument("--avg-bits", type=float, default=None, help="gpfq: mixed precision under this average")
    p.add_argument("--candidates", type=int, nargs="+", default=[2, 3, 4],
                   help="gpfq --avg-bits: the bit widths a layer may get")
    p.add_argument("--outliers", type=float, default=None,
                   help="fraction of each layer's weights kept exact in float16 (gpfq default 0.001, rtn 0)")
    p.add_argument("--refine-passes", type=int, default=3, help="gpfq: coordinate-descent passes (0 = plain)")
    p.add_argument("--no-scale-search", action="store_true", help="gpfq: plain max scaling")
    p.add_argument("--no-bias-correction", action="store_true")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--limit", type=positive_int, default=None, help="first N examples of the split")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--save", metavar="NAME", help="add the variant (recipe + measurements) to the variant store")
    p.set_defaults(fn=cmd_quantize)
