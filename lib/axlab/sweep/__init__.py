"""Sweeps: many recipes at once, on Ray (this machine or a cluster), and their Pareto front.

=========  ==================================================================
module     what
=========  ==================================================================
spec       :class:`SweepSpec` (the space of recipe steps, sampling, budget,
           objectives; JSON/YAML) and its trials
trial      :func:`plan` (concrete recipes on the driver) and :func:`run_trial`
           (rebuild, measure validation then test; runs on any worker)
runner     :func:`run` (Ray tasks or sequential), :func:`load`, :class:`SweepResult`
log        the sweep log (spec, trial status, errors) beside the variant store
session    :func:`ray_session` (local Ray or a cluster; always shut down)
pareto     the front over several objectives; the point chosen on validation
ablation   head ablation importance as Ray tasks (same results as sequential)
=========  ==================================================================
"""

from axlab.sweep.runner import BACKENDS, SweepResult, load, ray_session, run, trials_table
from axlab.sweep.spec import OBJECTIVES, Space, SweepSpec, trial_label

__all__ = ["SweepSpec", "Space", "OBJECTIVES", "run", "load", "SweepResult", "ray_session", "BACKENDS",
           "trials_table", "trial_label"]
