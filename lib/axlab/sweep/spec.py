"""A sweep spec: which recipes to try, how many, and how to measure and choose.

The *space* lists choices per recipe step; a *trial* is one point of it (a dict of
choices, e.g. ``{"head_fraction": 0.25, "importance": "gradient", "quantizer": "rtn",
"bits": 4}``). Choices a step does not use are dropped (no importance method when no
head is pruned, no bits for int8), so the grid holds no duplicates.

``sampling="grid"`` takes the points in order; ``"random"`` takes them in an order
shuffled with ``sample_seed``. Either way ``budget`` caps the count, and a larger budget
with the same seed extends a smaller one (the first trials are the same).

The spec round-trips JSON (and YAML when pyyaml is installed); :attr:`SweepSpec.sweep_id`
is a hash of everything that changes the trials' results, so running the same spec again
finds the sweep's finished trials and resumes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from axlab.core.errors import AxlabError

__all__ = ["Space", "SweepSpec", "IMPORTANCE_METHODS", "QUANTIZERS", "OBJECTIVES", "trial_key", "trial_label"]

IMPORTANCE_METHODS = ("gradient", "ablation", "captum", "random")
QUANTIZERS = ("none", "int8", "rtn", "gpfq")
# objective name -> (column in the trial table, "max" | "min")
OBJECTIVES = {"val_accuracy": ("val_accuracy", "max"), "latency_b1_ms": ("latency_b1_ms", "min"),
              "size_bytes": ("size_bytes", "min"), "val_loss": ("val_loss", "min"),
              "latency_b32_ms": ("latency_b32_ms", "min")}


def _as_list(value, name: str) -> list:
    out = list(value) if isinstance(value, (list, tuple)) else [value]
    if not out:
        raise AxlabError(f"The sweep space's '{name}' has no choices.", f"Give at least one value for '{name}'.")
    return out


def _check_all(values: list, ok, name: str, want: str) -> None:
    for v in values:
        if not ok(v):
            raise AxlabError(f"The sweep space's '{name}' holds {v!r}, which is not {want}.",
                             f"Use {want} for every '{name}' choice.")


@dataclass
class Space:
    """Choices per recipe step, applied in this order: heads, FFN, AxFormer, distillation, quantization."""

    head_fraction: list = field(default_factory=lambda: [0.0])       # share of heads removed (by importance)
    importance: list = field(default_factory=lambda: ["gradient"])   # how heads are ranked
    ffn_fraction: list = field(default_factory=lambda: [0.0])        # share of FFN neurons removed per layer
    ffn_criterion: str = "magnitude"                                 # how FFN neurons are ranked
    axformer_tolerance: list = field(default_factory=lambda: [None])  # None: no AxFormer search
    distill: list = field(default_factory=lambda: [False])           # distil from the base after pruning
    distill_steps: int = 100
    quantizer: list = field(default_factory=lambda: ["none"])         # none | int8 | rtn | gpfq
    bits: list = field(default_factory=lambda: [4])                  # for rtn and gpfq
    n_calibration: list = field(default_factory=lambda: [128])       # GPFQ calibration texts

    def __post_init__(self):
        for f in ("head_fraction", "importance", "ffn_fraction", "axformer_tolerance", "distill", "quantizer",
                  "bits", "n_calibration"):
            setattr(self, f, _as_list(getattr(self, f), f))
        num = (int, float)
        _check_all(self.head_fraction, lambda v: isinstance(v, num) and not isinstance(v, bool) and 0 <= v < 1,
                   "head_fraction", "a number in [0, 1)")
        _check_all(self.ffn_fraction, lambda v: isinstance(v, num) and not isinstance(v, bool) and 0 <= v < 1,
                   "ffn_fraction", "a number in [0, 1)")
        _check_all(self.importance, lambda v: v in IMPORTANCE_METHODS, "importance",
                   f"one of {', '.join(IMPORTANCE_METHODS)}")
        _check_all(self.axformer_tolerance, lambda v: v is None or (isinstance(v, num) and v >= 0),
                   "axformer_tolerance", "null (no search) or a loss tolerance >= 0")
        _check_all(self.distill, lambda v: isinstance(v, bool), "distill", "true or false")
        _check_all(self.quantizer, lambda v: v in QUANTIZERS, "quantizer", f"one of {', '.join(QUANTIZERS)}")
        _check_all(self.bits, lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 8, "bits",
                   "an integer from 2 to 8")
        _check_all(self.n_calibration, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   "n_calibration", "a positive integer")
        if not isinstance(self.distill_steps, int) or self.distill_steps < 1:
            raise AxlabError(f"distill_steps must be a positive integer, not {self.distill_steps!r}.",
                             "Set distill_steps to e.g. 100.")
        if self.ffn_criterion not in ("magnitude", "activation", "gradient"):
            raise AxlabError(f"Unknown ffn_criterion '{self.ffn_criterion}'.",
                             "Use magnitude, activation or gradient.")

    def points(self) -> list[dict]:
        """Every distinct trial in grid order (choices a step does not use are left out)."""
        out, seen = [], set()
        for hf, imp, ff, tol, dist, q, bits, ncal in itertools.product(
                self.head_fraction, self.importance, self.ffn_fraction, self.axformer_tolerance, self.distill,
                self.quantizer, self.bits, self.n_calibration):
            t: dict = {}
            if hf:
                t.update(head_fraction=float(hf), importance=imp)
            if ff:
                t["ffn_fraction"] = float(ff)
            if tol is not None:
                t["axformer_tolerance"] = float(tol)
            if dist:
                t["distill"] = True
            if q != "none":
                t["quantizer"] = q
                if q in ("rtn", "gpfq"):
                    t["bits"] = int(bits)
                if q == "gpfq":
                    t["n_calibration"] = int(ncal)
            key = json.dumps(t, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(t)
        return out


@dataclass
class SweepSpec:
    """What to sweep (``space``), how many trials, how to measure them and which to choose."""

    model: str = "default"                  # model source: "default", a folder or a hub id
    dataset: str = "rotten_tomatoes"        # registry name or CSV/TSV path
    data_seed: int = 0                      # the dataset's split seed
    space: Space = field(default_factory=Space)
    sampling: str = "grid"                  # grid | random
    budget: int | None = None               # at most this many trials (None: the whole grid)
    sample_seed: int = 0                    # for sampling="random"
    include_base: bool = True               # also measure the base model (the reference point)
    objectives: list = field(default_factory=lambda: ["val_accuracy", "latency_b1_ms", "size_bytes"])
    n_val: int | None = 500                 # first N validation examples (importance, search, selection)
    n_test: int | None = 1000               # first N test examples (reported, never used to choose)
    latency_runs: int = 30                  # batch-1 latency runs per trial
    threads: int = 1                        # torch threads per trial
    max_accuracy_drop: float = 0.01         # choose the cheapest front point within this of the base (validation)
    name: str = ""                          # a label; does not change the sweep id

    def __post_init__(self):
        if isinstance(self.space, dict):
            unknown = set(self.space) - {f.name for f in fields(Space)}
            if unknown:
                raise AxlabError(f"Unknown sweep space key(s): {', '.join(sorted(unknown))}.",
                                 f"Known keys: {', '.join(f.name for f in fields(Space))}.")
            self.space = Space(**self.space)
        if not isinstance(self.space, Space):
            raise AxlabError("The sweep's space must be a mapping of step choices.",
                             'Use e.g. {"head_fraction": [0.25, 0.5], "quantizer": ["int8"]}.')
        if self.sampling not in ("grid", "random"):
            raise AxlabError(f"Unknown sampling '{self.sampling}'.", "Use sampling 'grid' or 'random'.")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise AxlabError(f"The trial budget must be a positive integer, not {self.budget!r}.",
                             "Set budget to the number of trials to run, or null for the whole grid.")
        self.objectives = list(self.objectives)
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or len(self.objectives) < 2:
            raise AxlabError(f"Objectives must be at least two of {', '.join(OBJECTIVES)}"
                             + (f"; '{bad[0]}' is not one." if bad else "."),
                             'Use e.g. ["val_accuracy", "latency_b1_ms", "size_bytes"].')
        for name in ("n_val", "n_test"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise AxlabError(f"{name} must be a positive integer or null, not {v!r}.",
                                 f"Set {name} to a number of examples (or null for the whole split).")
        if not isinstance(self.latency_runs, int) or self.latency_runs < 1:
            raise AxlabError("latency_runs must be a positive integer.", "Use e.g. 30.")
        if not isinstance(self.include_base, bool):
            raise AxlabError("include_base must be true or false.", "Set include_base to true to measure the base.")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise AxlabError("threads (torch threads per trial) must be a positive integer.",
                             "Use 1 for many parallel trials on few cores.")
        if (not isinstance(self.max_accuracy_drop, (int, float)) or isinstance(self.max_accuracy_drop, bool)
                or not 0 <= self.max_accuracy_drop < 1):
            raise AxlabError("max_accuracy_drop must be in [0, 1).", "Use e.g. 0.01 for one point of accuracy.")

    # --------------------------------------------------------------------- trials

    def trials(self) -> list[dict]:
        """The trials to run, in order (the base first when ``include_base``)."""
        points = self.space.points()
        if self.sampling == "random":
            random.Random(self.sample_seed).shuffle(points)
        points = [p for p in points if p]          # the base is added separately
        if self.budget is not None:
            points = points[:self.budget]
        return ([{}] if self.include_base else []) + points

    @property
    def sweep_id(self) -> str:
        """Hash of everything that changes the results (not the name)."""
        d = self.to_dict()
        d.pop("name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def trial_settings(self) -> dict:
        """What every trial of this spec shares: data, measurement, threads."""
        return {"model": self.model, "dataset": self.dataset, "data_seed": self.data_seed, "n_val": self.n_val,
                "n_test": self.n_test, "latency_runs": self.latency_runs, "threads": self.threads,
                "distill_steps": self.space.distill_steps, "ffn_criterion": self.space.ffn_criterion}

    # --------------------------------------------------------------------- (de)serialisation

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        if not isinstance(d, dict):
            raise AxlabError("A sweep spec must be a JSON/YAML mapping.", "See `axlab sweep --help` for an example.")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise AxlabError(f"Unknown sweep spec key(s): {', '.join(sorted(unknown))}.",
                             f"Known keys: {', '.join(f.name for f in fields(cls))}.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise AxlabError(f"The sweep spec is not valid JSON: {e}.", "Fix the JSON (or use a .yaml file).") from None

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        if not path.exists():
            raise AxlabError(f"Sweep spec '{path}' does not exist.", "Pass the path of a .json or .yaml spec.")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise AxlabError("Reading a YAML spec needs pyyaml.", "pip install pyyaml, or use JSON.") from None
            try:
                return cls.from_dict(yaml.safe_load(text))
            except yaml.YAMLError as e:
                raise AxlabError(f"The sweep spec is not valid YAML: {e}.", "Fix the YAML.") from None
        return cls.from_json(text)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(self.to_json() + "\n")
        return path


def trial_key(settings: dict, choices: dict) -> str:
    """Identifies one trial's result: the shared settings + its choices."""
    return hashlib.sha256(json.dumps([settings, choices], sort_keys=True).encode()).hexdigest()[:16]


def trial_label(choices: dict) -> str:
    """A short name for a trial, e.g. ``h0.25-gradient+ffn0.25+rtn4``."""
    if not choices:
        return "base"
    parts = []
    if "head_fraction" in choices:
        parts.append(f"h{choices['head_fraction']:g}-{choices['importance']}")
    if "ffn_fraction" in choices:
        parts.append(f"ffn{choices['ffn_fraction']:g}")
    if "axformer_tolerance" in choices:
        parts.append(f"axf{choices['axformer_tolerance']:g}")
    if choices.get("distill"):
        parts.append("kd")
    q = choices.get("quantizer")
    if q == "int8":
        parts.append("int8")
    elif q in ("rtn", "gpfq"):
        parts.append(f"{q}{choices['bits']}" + (f"-c{choices['n_calibration']}" if q == "gpfq" else ""))
    return "+".join(parts)
