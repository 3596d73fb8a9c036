"""Metric names, their short names in tables, and the statistics the tables use.

Each run logs one row per training step (results/runs/{run}/metrics.parquet).
A run is summarised two ways: the mean of its last 5 steps ("where it ended
up", robust to single-step noise) and its whole-run mean (kept as a secondary
column: hacking ramps over training, so the two diverge). Across seeds a row
shows mean ± standard error; two rows are compared with a paired t-test by
seed when their seed sets match, else Welch's t-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

LAST_N = 5

REQUIRED_STEP_COLUMNS = ("step", "hack_s", "gt_s")  # what the tables cannot do without

DESCRIPTIONS = {
    "hack_s": "fraction of student rollouts that pass the flawed grader but fail the ground-truth tests",
    "oracle_error_rate": "fraction of student rollouts the oracle could not judge (timeout, resource limit, crash); "
                         "left out of hack and solve",
    "hack_t": "the same for the cached teacher rows",
    "gt_s": "fraction of student rollouts passing the ground-truth tests (solve)",
    "gt_t": "the same for the cached teacher rows",
    "pass_rate": "flawed-grader pass over the whole mixed group (mostly teacher hacks; not a student signal)",
    "reward_mean": "mean reward over the group",
    "format_rate": "fraction of rollouts in the expected answer format",
    "cin": "hack-ward fraction of the update before projection, ||relu(V u)|| / ||u||",
    "cout": "the same after projection (≈ 0 under one_sided by construction, not evidence)",
    "cin_s": "cin of the student part of the gradient",
    "cin_t": "cin of the teacher part of the gradient",
    "gate_fired_frac": "fraction of basis directions whose gate removed something",
    "basis_overlap": "overlap of a refreshed basis with the previous one (refresh steps only)",
    "eval_hack": "held-out hack rate with loophole hints (eval.parquet, mode=all)",
    "eval_solve": "held-out solve rate without hints (eval.parquet, mode=all)",
    "eval_oracle_error": "held-out fraction the oracle could not judge, hinted and plain (eval.parquet, mode=all)",
}
SHORT_NAMES = {"hack_s": "hack", "gt_s": "solve", "oracle_error_rate": "oracle err", "eval_hack": "eval hack", "eval_solve": "eval solve"}


def short_name(metric: str) -> str:
    """Column header for a metric: hack_s -> hack, hack_s_exit_code -> hack[exit_code]."""
    if metric in SHORT_NAMES:
        return SHORT_NAMES[metric]
    for prefix, short in (("hack_s_", "hack"), ("eval_hack_", "eval hack"), ("eval_solve_", "eval solve")):
        if metric.startswith(prefix):
            return f"{short}[{metric[len(prefix):]}]"
    return metric


def describe(metric: str) -> str:
    if metric in DESCRIPTIONS:
        return DESCRIPTIONS[metric]
    for prefix, base in (("hack_s_", "hack_s"), ("eval_hack_", "eval_hack"), ("eval_solve_", "eval_solve")):
        if metric.startswith(prefix):
            return f"{DESCRIPTIONS[base]}, loophole mode {metric[len(prefix):]} only"
    return metric


def summarize_steps(frame: pd.DataFrame, by: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Per group `by`: `<m>_last5` (mean of the last 5 steps) and `<m>_whole` (mean of all steps).

    `frame` must be sorted by step within each group. NaNs are skipped, so a metric logged only on
    some steps (basis_overlap) averages the steps that have it.
    """
    columns = frame[[by, *metrics]]
    last = columns.groupby(by, sort=False, observed=True).tail(LAST_N)
    last_mean = last.groupby(by, sort=False, observed=True)[list(metrics)].mean()
    whole_mean = columns.groupby(by, sort=False, observed=True)[list(metrics)].mean()
    return pd.concat([last_mean.add_suffix(f"_last{LAST_N}"), whole_mean.add_suffix("_whole")], axis=1)


@dataclass(frozen=True)
class Summary:
    mean: float
    se: float       # standard error across seeds; NaN with one seed
    n: int


def mean_se(values: Iterable[float]) -> Summary:
    x = np.asarray([v for v in values if not _isnan(v)], dtype=float)
    if x.size == 0:
        return Summary(math.nan, math.nan, 0)
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return Summary(float(x.mean()), se, int(x.size))


@dataclass(frozen=True)
class Difference:
    diff: float     # row mean minus reference mean
    lo: float       # 95% CI of the difference (NaN unless both sides have >= 2 seeds)
    hi: float
    p: float
    test: str       # "paired" (same seed sets), "welch", or "" (no test)


def compare_seeds(row: Mapping[int, float], ref: Mapping[int, float], level: float = 0.95) -> Difference:
    """Compare per-seed values {seed: value} of a row with its reference row."""
    row = {s: v for s, v in row.items() if not _isnan(v)}
    ref = {s: v for s, v in ref.items() if not _isnan(v)}
    if not row or not ref:
        return Difference(math.nan, math.nan, math.nan, math.nan, "")
    diff = float(np.mean(list(row.values())) - np.mean(list(ref.values())))
    if len(row) < 2 or len(ref) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, "")
    if set(row) == set(ref):
        seeds = sorted(row)
        a, b = [row[s] for s in seeds], [ref[s] for s in seeds]
        test, spread = "paired", np.std(np.subtract(a, b))
        result = stats.ttest_rel(a, b)
    else:
        a, b = list(row.values()), list(ref.values())
        test, spread = "welch", np.std(a) + np.std(b)
        result = stats.ttest_ind(a, b, equal_var=False)
    if spread == 0:  # identical values: the t statistic is undefined, not infinitely significant
        return Difference(diff, math.nan, math.nan, math.nan, test)
    ci = result.confidence_interval(level)
    return Difference(diff, float(ci.low), float(ci.high), float(result.pvalue), test)


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
