"""Comparison tables: one per question, and one of every run with its invocation.

A question's table has one line per row (an arm plus overrides, over seeds):
each metric as mean ± standard error across seeds of the per-run last-5
mean, the whole-run mean beside it, and the difference from the row's
reference in percentage points, with a 95% CI and p-value when both sides
have at least 2 seeds.

Reference row: the question's baseline. With `match` (e.g. [mix]), each row
is compared with the row of the baseline's arm that has the same values of
those settings (projected mix=0.25 vs vanilla mix=0.25); rows that are their
own reference show no difference.

Confounds, computed from the runs' resolved settings:
- by design: the settings in `vary` and `match`, and settings that differ
  only through the arm definitions (no row overrides them, one value per
  arm, e.g. `projection` between vanilla and projected);
- a confound: any other setting whose value differs between rows (e.g. a
  per-row `basis` override in a question that varies `mix`), a setting that
  differs between the seeds of one row (stale runs), and a compared pair of
  rows whose finished seed sets differ.

Same training: rows whose runs resolve to the same effective settings (`mix`
read as the G_t teacher rows per group it gives) are flagged (≡ in the table,
a note) and count as one finding in the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vhack.aggregate import setting_columns
from vhack.experiments import Question, QuestionRow
from vhack.grpo import teacher_rows_per_group
from vhack.metrics import LAST_N, compare_seeds, describe, mean_se, short_name

EXCLUDE_TAGS = ("smoke", "probe")
HEADLINE_METRICS = ("hack_s", "gt_s")
SUGGESTIVE = "†"


@dataclass(frozen=True)
class QuestionTable:
    question: Question
    frame: pd.DataFrame               # one line per question row; see row_stats for the columns
    metrics: tuple[str, ...]          # compared metrics, headline first
    by_design: tuple[str, ...]        # settings that differ between rows on purpose
    confounds: tuple[str, ...]        # human-readable confound descriptions
    missing: tuple[str, ...]          # rows with unfinished seeds, e.g. "no_gate: seeds 42, 43, 44 not finished"
    same_training: dict[str, str]     # row label -> the earlier row whose runs are the same training
    table: str                        # the Markdown table alone
    legend: str
    notes: str                        # by design / confounds / not finished

    @property
    def markdown(self) -> str:
        return f"{self.table}\n{self.legend}\n\n{self.notes}"


def question_metrics(question: Question) -> tuple[str, ...]:
    """hack and solve, then the question's own metrics (e.g. the unseen loophole mode's hack rate)."""
    return HEADLINE_METRICS + tuple(m for m in question.metrics if m not in HEADLINE_METRICS)


def included_runs(runs: pd.DataFrame, exclude_tags: Sequence[str] = EXCLUDE_TAGS) -> pd.DataFrame:
    """Runs without any of `exclude_tags`, indexed by run name."""
    if runs.empty:
        return runs.set_index(pd.Index([], name="run")) if "run" not in runs else runs.set_index("run")
    excluded = runs["tags"].fillna("").str.split(",").map(lambda tags: bool(set(tags) & set(exclude_tags)))
    return runs.loc[~excluded.to_numpy()].set_index("run")


def format_setting(value: Any) -> str:
    """One spelling per value, so 0.5, 0.50 and numpy floats compare equal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{float(value):g}"
    return str(value)


def metric_columns(runs: pd.DataFrame, metric: str) -> tuple[str | None, str | None]:
    """(per-run value column, whole-run column) for a step metric (`<m>_last5`) or a run-level one."""
    if f"{metric}_last{LAST_N}" in runs:
        return f"{metric}_last{LAST_N}", f"{metric}_whole"
    return (metric if metric in runs else None), None


def reference_rows(question: Question, runs: pd.DataFrame) -> dict[str, str | None]:
    """Row label -> label of the row it is compared with (None: it is a reference itself)."""
    base = _row(question, question.baseline)
    match = question.match
    if not match:
        return {r.label: None if r.label == base.label else base.label for r in question.rows}
    refs: dict[str, str | None] = {}
    for row in question.rows:
        key = [_row_setting(row, k, runs) for k in match]
        candidates = [c for c in question.rows
                      if c.arm == base.arm and [_row_setting(c, k, runs) for k in match] == key]
        if row in candidates:
            refs[row.label] = None
        elif candidates:
            base_rest = _unmatched_overrides(base, match)
            refs[row.label] = next((c for c in candidates if _unmatched_overrides(c, match) == base_rest),
                                   candidates[0]).label
        else:
            refs[row.label] = base.label
    return refs


def _row(question: Question, label: str) -> QuestionRow:
    return next(r for r in question.rows if r.label == label)


def _row_setting(row: QuestionRow, key: str, runs: pd.DataFrame) -> str:
    """A row's value of a setting: its override, else the value its finished runs were trained with."""
    if key in row.overrides:
        return format_setting(row.overrides[key])
    finished = [r for r in row.runs if r in runs.index]
    return format_setting(runs.at[finished[0], key]) if finished and key in runs else "none"


def _unmatched_overrides(row: QuestionRow, match: Sequence[str]) -> dict[str, str]:
    return {k: format_setting(v) for k, v in row.overrides.items() if k not in match}


def row_stats(row: QuestionRow, ref: QuestionRow | None, runs: pd.DataFrame,
              metrics: Sequence[str]) -> dict[str, Any]:
    """Numbers for one table line: n, seeds, and per metric m: m, m_se, m_whole, d_m, d_m_lo, d_m_hi, p_m."""
    mine = runs.loc[[r for r in row.runs if r in runs.index]]
    theirs = runs.loc[[r for r in ref.runs if r in runs.index]] if ref is not None else None
    out: dict[str, Any] = {"label": row.label, "arm": row.arm, "reference": ref.label if ref else None,
                           "n": len(mine), "seeds": tuple(sorted(mine["seed"].tolist())),
                           "ref_n": len(theirs) if theirs is not None else 0, "test": ""}
    for m in metrics:
        value_col, whole_col = metric_columns(runs, m)
        values = dict(zip(mine["seed"], mine[value_col])) if value_col else {}
        summary = mean_se(values.values())
        out.update({m: summary.mean, f"{m}_se": summary.se,
                    f"{m}_whole": mine[whole_col].mean() if whole_col and len(mine) else math.nan})
        diff = compare_seeds(values, dict(zip(theirs["seed"], theirs[value_col])) if theirs is not None
                             and value_col else {})
        out.update({f"d_{m}": diff.diff, f"d_{m}_lo": diff.lo, f"d_{m}_hi": diff.hi, f"p_{m}": diff.p})
        out["test"] = out["test"] or diff.test
    return out


def find_confounds(question: Question, runs: pd.DataFrame,
                   refs: dict[str, str | None]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(by-design settings, confound descriptions); see the module docstring for the rule."""
    rows = [r for r in question.rows if any(name in runs.index for name in r.runs)]
    values: dict[str, dict[str, set[str]]] = {}  # setting -> row label -> values over its runs
    keys = setting_columns(runs.reset_index())
    for row in rows:
        mine = runs.loc[[r for r in row.runs if r in runs.index]]
        for key in keys:
            values.setdefault(key, {})[row.label] = {format_setting(v) for v in mine[key]}
    overridden = {k for r in question.rows for k in r.overrides}
    by_design, confounds = [], []
    for key, per_row in sorted(values.items()):
        for label, vals in per_row.items():
            if len(vals) > 1:
                confounds.append(f"{key} differs between the seeds of {label!r} ({', '.join(sorted(vals))})")
        distinct = {v for vals in per_row.values() for v in vals}
        if len(distinct) < 2:
            continue
        if key in question.vary or key in question.match or _arm_defined(key, rows, per_row,
                                                                                   overridden):
            by_design.append(key)
        else:
            confounds.append(f"{key} ({_who_has_what(per_row)})")
    confounds += _seed_set_confounds(question, runs, refs)
    return tuple(by_design), tuple(confounds)


def _arm_defined(key: str, rows: list[QuestionRow], per_row: dict[str, set[str]], overridden: set[str]) -> bool:
    """No row overrides `key`, and it has one value per arm: it differs only through the arm definitions."""
    if key in overridden:
        return False
    per_arm: dict[str, set[str]] = {}
    for row in rows:
        per_arm.setdefault(row.arm, set()).update(per_row[row.label])
    return all(len(v) == 1 for v in per_arm.values())


def _who_has_what(per_row: dict[str, set[str]]) -> str:
    by_value: dict[str, list[str]] = {}
    for label, vals in per_row.items():
        by_value.setdefault("/".join(sorted(vals)), []).append(label)
    return "; ".join(f"{v}: {', '.join(labels)}" for v, labels in by_value.items())


def _seed_set_confounds(question: Question, runs: pd.DataFrame, refs: dict[str, str | None]) -> list[str]:
    pairs = []
    for row in question.rows:
        ref_label = refs[row.label]
        if ref_label is None:
            continue
        mine, theirs = _finished_seeds(row, runs), _finished_seeds(_row(question, ref_label), runs)
        if mine and theirs and mine != theirs:
            pairs.append(f"{row.label!r} {_seeds(mine)} vs {ref_label!r} {_seeds(theirs)}")
    return [f"seed sets differ ({'; '.join(pairs)})"] if pairs else []


def _finished_seeds(row: QuestionRow, runs: pd.DataFrame) -> list[int]:
    return sorted(int(runs.at[r, "seed"]) for r in row.runs if r in runs.index)


def _seeds(seeds: Sequence[int]) -> str:
    return "{" + ", ".join(map(str, seeds)) + "}"


def effective_training(settings: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A run's settings as the trainer resolves them: `mix` becomes G_t teacher rows per group
    (and the teacher drops out where G_t = 0), so mixes that round to the same G_t compare equal."""
    spelled = {k: format_setting(v) for k, v in settings.items()}
    if spelled.get("group_size", "none") != "none" and spelled.get("mix", "none") != "none":
        teacher = None if spelled.get("teacher", "none") == "none" else spelled["teacher"]
        g_t = teacher_rows_per_group(int(float(settings["group_size"])), float(settings["mix"]), teacher)
        del spelled["mix"]
        spelled["teacher_rows"] = str(g_t)
        if g_t == 0:
            spelled.pop("teacher", None)
    return tuple(sorted(spelled.items()))


def _first_settings(row: QuestionRow, runs: pd.DataFrame, keys: Sequence[str]) -> dict[str, Any] | None:
    finished = [r for r in row.runs if r in runs.index]
    return {k: runs.at[finished[0], k] for k in keys} if finished else None


def same_training_rows(question: Question, runs: pd.DataFrame) -> dict[str, str]:
    """Row label -> label of an earlier row whose finished runs have the same `effective_training`."""
    keys = setting_columns(runs.reset_index())
    first: dict[tuple, str] = {}
    same: dict[str, str] = {}
    for row in question.rows:
        settings = _first_settings(row, runs, keys)
        if settings is None:
            continue
        key = effective_training(settings)
        if key in first:
            same[row.label] = first[key]
        else:
            first[key] = row.label
    return same


def same_training_notes(question: Question, runs: pd.DataFrame, same: dict[str, str]) -> tuple[str, ...]:
    """Per flagged row: which nominal settings differ and what they resolve to."""
    keys = setting_columns(runs.reset_index())
    notes = []
    for label, other in same.items():
        mine, theirs = (_first_settings(_row(question, lab), runs, keys) for lab in (label, other))
        differ = [f"{k} {format_setting(mine[k])} vs {format_setting(theirs[k])}" for k in keys
                  if format_setting(mine[k]) != format_setting(theirs[k])]
        resolved = dict(effective_training(mine)).get("teacher_rows")
        notes.append(f"{label!r} resolves to the same settings as {other!r} ({', '.join(differ) or 'no difference'}"
                     f"{f'; both G_t = {resolved} teacher rows per group' if resolved else ''}): one finding, not two")
    return tuple(notes)


def missing_runs(question: Question, runs: pd.DataFrame) -> tuple[str, ...]:
    out = []
    for row in question.rows:
        absent = [seed for seed, run in zip(question.seeds, row.runs) if run not in runs.index]
        if len(absent) == len(row.runs):
            out.append(f"{row.label}: no finished runs yet")
        elif absent:
            out.append(f"{row.label}: seed{'s' if len(absent) > 1 else ''} {', '.join(map(str, absent))} "
                       "not finished")
    return tuple(out)


def question_table(runs_df: pd.DataFrame, question: Question,
                   exclude_tags: Sequence[str] = EXCLUDE_TAGS) -> QuestionTable:
    """The comparison table of one question over the finished runs not tagged with `exclude_tags`."""
    labels = [r.label for r in question.rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"questions.{question.id}: row labels must be unique; got {labels}")
    runs = included_runs(runs_df, exclude_tags)
    metrics = question_metrics(question)
    refs = reference_rows(question, runs)
    frame = pd.DataFrame([row_stats(r, _row(question, refs[r.label]) if refs[r.label] else None, runs, metrics)
                          for r in question.rows])
    same = same_training_rows(question, runs)
    frame["same_as"] = [same.get(label) for label in frame["label"]]
    by_design, confounds = find_confounds(question, runs, refs)
    missing = missing_runs(question, runs)
    show_reference = bool(question.match)
    return QuestionTable(question, frame, metrics, by_design, confounds, missing, same,
                         table=render_table(frame, metrics, show_reference),
                         legend=legend(metrics, show_reference),
                         notes=render_notes(by_design, confounds, missing, same_training_notes(question, runs, same)))


# ---- rendering ----

def _value(mean: float, se: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    return f"{mean:.3f}{SUGGESTIVE}" if n == 1 else f"{mean:.3f} ± {se:.3f}"


def _number(x: float, spec: str = ".3f") -> str:
    return "—" if math.isnan(x) else format(x, spec)


def _pp(x: float, suggestive: bool) -> str:
    return "—" if math.isnan(x) else f"{100 * x:+.1f}{SUGGESTIVE if suggestive else ''}"


def format_p(p: float) -> str:
    return "" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_table(frame: pd.DataFrame, metrics: Sequence[str], show_reference: bool) -> str:
    header = ["row"]
    for m in metrics:
        s = short_name(m)
        header += [s, "WH", f"Δ{s} pp", "95% CI", "p"]
    header += ["n", "test"] + (["vs"] if show_reference else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in frame.to_dict("records"):
        suggestive = r["n"] == 1 or r["ref_n"] == 1
        same = f" ≡ {r['same_as']}" if isinstance(r.get("same_as"), str) else ""
        cells = [_escape(r["label"] + same)]
        for m in metrics:
            cells += [_value(r[m], r[f"{m}_se"], r["n"]), _number(r[f"{m}_whole"]),
                      _pp(r[f"d_{m}"], suggestive), _ci(r[f"d_{m}_lo"], r[f"d_{m}_hi"]), format_p(r[f"p_{m}"])]
        cells += [f"{r['n']}{SUGGESTIVE if r['n'] == 1 else ''}", r["test"]]
        cells += [_escape(r["reference"]) if isinstance(r["reference"], str) else "(reference)"] \
            if show_reference else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_notes(by_design: Sequence[str], confounds: Sequence[str], missing: Sequence[str],
                 same_training: Sequence[str] = ()) -> str:
    lines = [f"By design: rows differ in {', '.join(by_design)}." if by_design
             else "By design: no setting differs between the rows' runs.",
             "Confounds: " + ("; ".join(confounds) + "." if confounds else "none found.")]
    if same_training:
        lines.append("Same training (≡): " + "; ".join(same_training) + ".")
    if missing:
        lines.append("Not finished: " + "; ".join(missing) + ".")
    return "\n\n".join(lines) + "\n"


def legend(metrics: Sequence[str], show_reference: bool = False) -> str:
    parts = [f"**{short_name(m)}**: {describe(m)}" for m in metrics]
    parts += [
        f"each run's mean over its last {LAST_N} steps, then mean ± standard error across seeds",
        "**WH**: whole-run mean (secondary; hacking ramps over training, so it lags the last-5 number)",
        "**Δ pp**: row minus its reference, in percentage points (— on the reference row)",
        "**95% CI**, **p**: of Δ, by a paired t-test over seeds when both rows finished the same seeds "
        "(test = paired), else Welch's t-test; only when both rows have ≥ 2 seeds",
        f"**n**: finished seeds; **{SUGGESTIVE}**: one seed on either side — suggestive only",
    ]
    if show_reference:
        parts.append("**vs**: the reference row (same `match` settings, baseline arm)")
    return "Legend: " + "; ".join(parts) + "."


def runs_table(runs_df: pd.DataFrame) -> str:
    """Every run, grouped by configuration (arm + settings, seed aside), groups and runs in time order."""
    if runs_df.empty:
        return "No finished runs.\n"
    settings = setting_columns(runs_df)
    spelled = runs_df[settings].map(format_setting)
    varying = [c for c in settings if spelled[c].nunique() > 1]
    config = runs_df["arm"].astype(str)
    for c in varying:
        config = config + f" · {c}=" + spelled[c]
    order = runs_df.assign(config_=config).sort_values(["started_at", "run"], na_position="last")
    common = ", ".join(f"{c}={spelled[c].iloc[0]}" for c in settings if c not in varying)
    groups = order.groupby("config_", sort=False)  # first-seen order = order of each group's first start
    lines = [f"{len(runs_df)} runs in {groups.ngroups} configurations.", "", f"Common settings: {common}.", ""]
    for name, group in groups:
        lines += [f"### {_escape(name)}", "",
                  "| run | seed | tags | started (UTC) | wall s | hack | solve | commit | invocation |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in group.to_dict("records"):
            start = "—" if pd.isna(r["started_at"]) else r["started_at"].strftime("%Y-%m-%d %H:%M")
            commit = f"{r['git_commit']}{'+dirty' if r['git_dirty'] else ''}"
            lines.append(f"| {r['run']} | {r['seed']} | {r['tags']} | {start} | {_number(r['wall_seconds'], '.0f')}"
                         f" | {_number(r['hack_s_last5'])} | {_number(r['gt_s_last5'])} | {commit} | "
                         f"`{_escape(r['invocation'])}` |")
        lines.append("")
    return "\n".join(lines)
