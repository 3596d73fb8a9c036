"""The results report: every question with its why, table, answer, held-out evaluation, hacks and plots.

`write_report` writes {out_dir}/results.md, the same rendered as a self-contained
{out_dir}/results.html (figures inlined; what `snakemake --report` shows) and, per question,
{out_dir}/figures/{qid}_curves.png (hack and solve over steps), {qid}_tradeoff.png
(last-5 hack vs solve of every row, arrows from each row's reference) and
{qid}_cin.png (hack-ward gradient fraction over steps against a null:
measured in the question's random-V row where it has one, else sqrt(k/r)).
`report_files` names them up front for a rule's outputs. The answer under each table is generated from the numbers: what
moved, by how much, at what solve cost, on how many seeds, and whether the
difference is significant; it claims nothing else. Given the runs' samples.parquet files, each
question also shows when each loophole mode's hack rate first reached 10% in each run, and a few
example hacks per mode from its runs' last steps.
"""

from __future__ import annotations

import base64
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vhack.experiments import Question
from vhack.io import atomic_path, write_text
from vhack.metrics import LAST_N, describe, short_name
from vhack.samples import example_hacks, read_samples
from vhack.tables import (EXCLUDE_TAGS, HEADLINE_METRICS, QuestionTable, format_p, included_runs, legend,
                          question_table, runs_table)

RESULTS_FILE = "results.md"
HTML_FILE = "results.html"
ONSET = 0.10               # a mode's hack "appears" at the first step its rate reaches this
EXAMPLES_PER_MODE = 2
MAX_EXAMPLE_CHARS = 1500
RATE_PREFIXES = ("hack_", "gt_", "eval_", "pass_rate", "format_rate", "cin", "cout", "gate_fired_frac")
FIGURES_DIR = "figures"
FIGURE_KINDS = ("curves", "tradeoff", "cin")
ALPHA = 0.05
TEST_NAMES = {"paired": "paired t-test", "welch": "Welch's t-test"}
CONTROL_MEANINGS = {
    "random": "**random V** (random orthonormal directions, the real basis' k per module): rules out that "
              "removing any k directions per module (a smaller step) is what lowers hacking.",
    "shuffled": "**shuffled** (hack/clean labels shuffled across the pairs, sides re-paired across problems): "
                "rules out that the completions alone, without knowing which side hacks, give the effect; where "
                "each row still contrasts a hack token with a clean one (divergence basis) its span stays close "
                "to the real one and its orientation is random, so it speaks mainly under one_sided.",
    "nonhack": "**clean-vs-clean** (each hack replaced by another problem's correct solution): rules out "
               "a basis of generic differences between solutions (code likelihood, problem identity).",
    "no_teacher": "**no teacher** (mix 0, question q15): rules out that projection only blocks imitating the "
                  "cached teacher's hacks rather than the student's own.",
}


def _as_list(questions: Mapping[str, Question] | Iterable[Question]) -> list[Question]:
    return list(questions.values()) if isinstance(questions, Mapping) else list(questions)


def figure_path(out_dir: str | os.PathLike, qid: str, kind: str) -> Path:
    return Path(out_dir) / FIGURES_DIR / f"{qid}_{kind}.png"


def report_files(questions: Mapping[str, Question] | Iterable[Question], out_dir: str | os.PathLike) -> list[Path]:
    """Every file write_report writes, in order: results.md, results.html, then three figures per question."""
    return [Path(out_dir) / RESULTS_FILE, Path(out_dir) / HTML_FILE] + [
        figure_path(out_dir, q.id, kind) for q in _as_list(questions) for kind in FIGURE_KINDS]


def write_report(runs_df: pd.DataFrame, metrics_df: pd.DataFrame,
                 questions: Mapping[str, Question] | Iterable[Question], out_dir: str | os.PathLike,
                 exclude_tags: Sequence[str] = EXCLUDE_TAGS,
                 samples: Mapping[str, str | os.PathLike] | None = None) -> list[Path]:
    """Write results.md, results.html and the figures; returns the files written (== report_files(...)).

    `samples`: run name -> its samples.parquet, for the example hacks (none shown without)."""
    questions = _as_list(questions)
    runs = included_runs(runs_df, exclude_tags)
    sections = []
    for question in questions:
        table = question_table(runs_df, question, exclude_tags)
        rows = row_runs(table, runs)
        plot_curves(table, metrics_df, rows, figure_path(out_dir, question.id, "curves"))
        plot_tradeoff(table, figure_path(out_dir, question.id, "tradeoff"))
        plot_cin(table, metrics_df, runs, rows, figure_path(out_dir, question.id, "cin"))
        names = [n for _, ns in rows for n in ns]
        sections.append(question_section(table, runs, hack_onsets(metrics_df, names),
                                         late_hacks({n: samples[n] for n in names if n in (samples or {})})))
    text = header(runs_df, runs) + "\n".join(sections)
    write_text(Path(out_dir) / RESULTS_FILE, text)
    write_text(Path(out_dir) / HTML_FILE, render_html(text, Path(out_dir)))
    return report_files(questions, out_dir)


# ---- text ----

def header(runs_df: pd.DataFrame, runs: pd.DataFrame) -> str:
    latest = runs_df["finished_at"].max() if len(runs_df) else pd.NaT
    when = "" if pd.isna(latest) else f"; the latest finished at {latest:%Y-%m-%d %H:%M} UTC"
    return "\n".join([
        "# Results, organized by the question each run answers", "",
        f"Generated by `vhack.report` from {len(runs_df)} finished runs ({len(runs_df) - len(runs)} tagged "
        f"{'/'.join(EXCLUDE_TAGS)} are left out of the tables){when}.", "",
        "## How to read this", "",
        legend(HEADLINE_METRICS, show_reference=True), "",
        "Figures: curves show the mean across seeds, with a band from the lowest to the highest seed where a "
        "row has more than one (no band at n = 1); rates are plotted on [0, 1]; the "
        "trade-off plot shows each row's last-5 hack against solve (± standard error), with an arrow from "
        "its reference row; the cin plot shows the hack-ward fraction of the gradient before projection "
        "against a null: the cin measured in the question's random-V row where it has one, else the "
        "analytic random-direction level sqrt(k/r) (its legend says which).", "",
        "Controls, and what each rules out:", "",
        *[f"- {line}" for line in CONTROL_MEANINGS.values()], "", "",
    ])


def question_section(table: QuestionTable, runs: pd.DataFrame, onsets: pd.DataFrame | None = None,
                     hacks: Mapping[str, pd.DataFrame] | None = None) -> str:
    q = table.question
    qid = q.id
    extra = [f"**{short_name(m)}**: {describe(m)}" for m in table.metrics if m not in HEADLINE_METRICS]
    names = [r for row in q.rows for r in row.runs if r in runs.index]
    parts = [f"## {qid}. {q.title}", "", f"**Why:** {q.why}", ""]
    parts += [q.notes, ""] if q.notes else []
    parts += [table.table, "Also: " + "; ".join(extra) + ".", ""] if extra else [table.table]
    parts += [table.notes, f"**Answer:** {answer(table)}", "",
              f"![{qid} hack and solve over steps]({FIGURES_DIR}/{qid}_curves.png) "
              f"![{qid} hack vs solve]({FIGURES_DIR}/{qid}_tradeoff.png) "
              f"![{qid} cin over steps]({FIGURES_DIR}/{qid}_cin.png)", "", table.heldout]
    parts += [onset_section(onsets), ""] if onsets is not None and not onsets.empty else []
    parts += [hacks_section(hacks), ""] if hacks else []
    parts += [f"<details><summary>Runs behind this table ({len(names)})</summary>", "",
              runs_table(runs.loc[names].reset_index()) if names else "None yet.", "", "</details>", ""]
    return "\n".join(parts)


def answer(table: QuestionTable) -> str:
    """Sentences that state what the table's numbers show, and nothing more."""
    frame = table.frame.set_index("label")
    compared = [r for r in frame.itertuples() if isinstance(r.reference, str) and r.n > 0
                and frame.at[r.reference, "n"] > 0 and r.Index not in table.same_training]
    if not compared:
        return ("No finished runs yet." if frame["n"].sum() == 0 else
                "No row can be compared with its reference yet (see Not finished).")
    focus = table.metrics[2] if len(table.metrics) > 2 else "hack_s"
    sentences = [_lead(compared, focus)]
    for r in compared:
        ref = frame.loc[r.reference]
        changes = [_change(m, r, ref) for m in (focus, *[m for m in table.metrics if m != focus])]
        seeds = f"n = {r.n} vs {ref.n} seeds" + (", suggestive only" if min(r.n, ref.n) == 1 else "")
        sentences.append(f"{r.Index} vs {r.reference}: " + "; ".join(changes) + f" ({seeds}).")
    tests = sum(not math.isnan(getattr(r, f"p_{m}")) for r in compared for m in table.metrics)
    if tests > 1:
        sentences.append(f"p-values are per comparison, not corrected for the {tests} tests in this table.")
    for label, other in table.same_training.items():
        sentences.append(f"{label} is the same training as {other} (≡), counted once.")
    if table.confounds:
        short = [c.split(" (")[0] for c in table.confounds]
        sentences.append(f"Caveat: the comparison is confounded ({'; '.join(short)}; see Confounds).")
    return " ".join(sentences)


def _lead(compared: list, metric: str) -> str:
    name = short_name(metric)
    drops = [r for r in compared if getattr(r, f"d_{metric}") < 0]
    if not drops:
        return f"No row has a lower {name} than its reference."
    best = min(drops, key=lambda r: getattr(r, f"d_{metric}"))
    p = getattr(best, f"p_{metric}")
    verdict = ("a single seed on one side" if math.isnan(p) and min(best.n, best.ref_n) == 1 else
               "no test possible" if math.isnan(p) else
               f"{'significant' if p < ALPHA else 'not significant'} at {ALPHA} (p = {format_p(p)})")
    solve = best.d_gt_s
    cost = "" if math.isnan(solve) else f", with solve {100 * solve:+.1f}pp"
    return (f"Largest {name} reduction: {best.Index} ({100 * getattr(best, f'd_{metric}'):+.1f}pp vs "
            f"{best.reference}{cost}; {verdict}).")


def _change(metric: str, row, ref: pd.Series) -> str:
    name, d = short_name(metric), getattr(row, f"d_{metric}")
    if math.isnan(d):
        return f"{name}: no data"
    direction = "fell" if d < 0 else "rose" if d > 0 else "did not change"
    text = f"{name} {direction} {abs(100 * d):.1f}pp ({ref[metric]:.3f} → {getattr(row, metric):.3f}"
    p, lo, hi = getattr(row, f"p_{metric}"), getattr(row, f"d_{metric}_lo"), getattr(row, f"d_{metric}_hi")
    if not math.isnan(p):
        verdict = "significant" if p < ALPHA else "not significant"
        text += (f"; 95% CI {100 * lo:+.1f} to {100 * hi:+.1f}pp, {TEST_NAMES[row.test]} p = {format_p(p)}, "
                 f"{verdict} at {ALPHA}")
    return text + ")"


# ---- what the hacks look like, and when they appear ----

def hack_onsets(steps: pd.DataFrame, names: Sequence[str], threshold: float = ONSET) -> pd.DataFrame:
    """Per run (index) and loophole mode (columns): the first step whose student hack rate in that
    mode reached `threshold` (NaN: never)."""
    modes = sorted(c[len("hack_s_"):] for c in steps.columns if c.startswith("hack_s_"))
    sub = steps.loc[steps["run"].isin(names)] if names and modes else steps.iloc[:0]
    out = {}
    for run, group in sub.groupby("run", observed=True, sort=False):
        out[run] = {m: group.loc[group[f"hack_s_{m}"] >= threshold, "step"].min() for m in modes}
    return pd.DataFrame.from_dict(out, orient="index", columns=modes).reindex([n for n in names if n in out])


def onset_section(onsets: pd.DataFrame) -> str:
    header = ["run", *onsets.columns]
    lines = [f"When each loophole mode's hack first reached {ONSET:.0%} (first training step with the student's "
             f"hack rate in that mode ≥ {ONSET:.0%}; — never):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, row in onsets.iterrows():
        lines.append("| " + " | ".join([run, *("—" if pd.isna(v) else str(int(v)) for v in row)]) + " |")
    return "\n".join(lines)


def late_hacks(samples: Mapping[str, str | os.PathLike], last_steps: int = LAST_N,
               per_mode: int = EXAMPLES_PER_MODE) -> dict[str, pd.DataFrame]:
    """Per mode: up to `per_mode` student hacks from the last `last_steps` steps of the runs `samples` names."""
    frames: list[pd.DataFrame] = []
    for run, path in samples.items():
        frames += list(example_hacks(read_samples(path).assign(run=run), last_steps, per_mode).values())
    if not frames:
        return {}
    merged = pd.concat(frames).drop_duplicates("completion")
    rank = merged.groupby(["mode", "run"], sort=False).cumcount()   # spread the examples over runs
    merged = merged.assign(rank_=rank).sort_values("rank_", kind="stable").drop(columns="rank_")
    return {mode: rows.head(per_mode) for mode, rows in merged.groupby("mode")}


def hacks_section(hacks: Mapping[str, pd.DataFrame]) -> str:
    lines = [f"Example hacks (student completions the flawed grader passed and the ground-truth tests failed, "
             f"from the last {LAST_N} steps):", ""]
    for mode, rows in hacks.items():
        for r in rows.itertuples():
            lines += [f"**{mode}** — run `{r.run}`, step {r.step}, problem `{r.problem_id}`, reward {r.reward:.2f}:",
                      "", code_block(r.completion), ""]
    return "\n".join(lines)


def code_block(text: str, limit: int = MAX_EXAMPLE_CHARS) -> str:
    """`text` as a fenced block; the fence is longer than any backtick run inside (completions hold fences)."""
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def render_html(markdown: str, base_dir: Path) -> str:
    """results.md as one self-contained HTML page: tables rendered, figures inlined as data URIs."""
    from markdown_it import MarkdownIt

    def inline(match: re.Match) -> str:
        path = base_dir / match.group(2)
        if not path.is_file():
            return match.group(0)
        return f'![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})'
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(
        re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, markdown))
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:85%}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:32%}pre{background:#f6f6f6;"
             "padding:6px;overflow-x:auto}")
    return f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vhack results</title><style>{style}</style>" \
           f"</head><body>\n{body}</body></html>\n"


# ---- figures ----

RowRuns = list[tuple[str, list[str]]]  # (row label, names of its finished, included runs)


def row_runs(table: QuestionTable, runs: pd.DataFrame) -> RowRuns:
    return [(row.label, [r for r in row.runs if r in runs.index]) for row in table.question.rows]


def _band(steps: pd.DataFrame, names: list[str], metric: str) -> pd.DataFrame:
    """Per step: mean, min and max of `metric` across the runs `names`."""
    if not names or metric not in steps:
        return pd.DataFrame(columns=["mean", "min", "max"])
    sub = steps.loc[steps["run"].isin(names), ["step", metric]]
    return sub.groupby("step")[metric].agg(["mean", "min", "max"]).dropna()


def _draw_bands(ax, steps: pd.DataFrame, rows: RowRuns, metric: str) -> bool:
    """Each row's mean over its runs; a band from the lowest to the highest run only where n > 1."""
    drawn = False
    for i, (label, names) in enumerate(rows):
        band = _band(steps, names, metric)
        if band.empty:
            continue
        ax.plot(band.index, band["mean"], color=f"C{i % 10}", label=f"{label} (n={len(names)})")
        if len(names) > 1:
            ax.fill_between(band.index, band["min"], band["max"], color=f"C{i % 10}", alpha=0.2, lw=0)
        drawn = True
    return drawn


def _band_note(rows: RowRuns) -> str:
    if any(len(names) > 1 for _, names in rows):
        return "line = mean across seeds, band = lowest to highest seed (rows with n > 1)"
    return "one seed per row: no band"


def is_rate(metric: str) -> bool:
    return metric.startswith(RATE_PREFIXES)


def axis_label(metric: str, prefix: str = "") -> str:
    """A metric's description, wrapped to fit beside a 4-inch axis."""
    return textwrap.fill(f"{prefix}{short_name(metric)}: {describe(metric)}", 55)


def _style_axes(ax, metric: str, step_axis: bool = True) -> None:
    if step_axis:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if is_rate(metric):
        ax.set_ylim(0, 1)


def _empty(ax, text: str = "no finished runs yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_curves(table: QuestionTable, steps: pd.DataFrame, rows: RowRuns, path: Path) -> None:
    """One panel per compared metric: each row's mean over seeds per step, band = min to max seed."""
    fig = Figure(figsize=(5 * len(table.metrics), 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(table.metrics), squeeze=False)[0], table.metrics):
        if _draw_bands(ax, steps, rows, metric):
            ax.legend(fontsize=7)
        else:
            _empty(ax)
        ax.set(xlabel="training step", title=short_name(metric))
        ax.set_ylabel(axis_label(metric), fontsize=8)
        _style_axes(ax, metric)
    fig.suptitle(f"{table.question.id}: {_band_note(rows)}", fontsize=9)
    _save(fig, path)


def plot_tradeoff(table: QuestionTable, path: Path) -> None:
    """Last-5 hack against solve per row (± SE), arrows from each row's reference."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    frame = table.frame.set_index("label")
    done = frame[frame["n"] > 0]
    for i, (label, r) in enumerate(frame.iterrows()):
        if r["n"] == 0:
            continue
        is_ref = not isinstance(r["reference"], str)
        ax.errorbar(r["gt_s"], r["hack_s"], xerr=np.nan_to_num(r["gt_s_se"]), yerr=np.nan_to_num(r["hack_s_se"]),
                    fmt="s" if is_ref else "o", color=f"C{i % 10}", capsize=3,
                    label=f"{label} (n={r['n']}{', reference' if is_ref else ''})")
        if not is_ref and frame.at[r["reference"], "n"] > 0:
            ref = frame.loc[r["reference"]]
            ax.annotate("", xy=(r["gt_s"], r["hack_s"]), xytext=(ref["gt_s"], ref["hack_s"]),
                        arrowprops={"arrowstyle": "->", "color": "gray", "alpha": 0.6})
    if done.empty:
        _empty(ax)
    else:
        ax.legend(fontsize=7)
    ax.set_xlabel(axis_label("gt_s", f"last-{LAST_N} mean "), fontsize=8)
    ax.set_ylabel(axis_label("hack_s", f"last-{LAST_N} mean "), fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{table.question.id}: hack vs solve (lower right is better; ± SE)")
    _save(fig, path)


def measured_cin_null(steps: pd.DataFrame, runs: pd.DataFrame, rows: RowRuns) -> tuple[str, float] | None:
    """(row label, mean cin over its runs' steps) of the first row whose runs all used a random-V basis."""
    if "basis_control" not in runs or "cin" not in steps:
        return None
    for label, names in rows:
        if names and (runs.loc[names, "basis_control"] == "random").all():
            level = steps.loc[steps["run"].isin(names), "cin"].mean()
            if not math.isnan(level):
                return label, float(level)
    return None


def plot_cin(table: QuestionTable, steps: pd.DataFrame, runs: pd.DataFrame, rows: RowRuns, path: Path) -> None:
    """cin per row over steps, against the null: the cin measured in a random-V row (`measured_cin_null`)
    where the question has one, else the analytic level sqrt(k/r) of the rows' runs."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    drawn = _draw_bands(ax, steps, rows, "cin")
    measured = measured_cin_null(steps, runs, rows)
    nulls = {label: runs.loc[names, "null_cin"].mean() for label, names in rows if names and "null_cin" in runs}
    levels = [v for v in nulls.values() if not math.isnan(v)]
    if measured is not None:
        label, level = measured
        ax.axhline(level, color="black", ls="--", lw=1, label=f"null: cin measured under random V ({label}) "
                                                              f"{level:.3f}")
    elif levels and np.ptp(levels) < 1e-9:
        ax.axhline(levels[0], color="black", ls="--", lw=1, label=f"null sqrt(k/r), analytic {levels[0]:.3f}")
    else:  # rows with different k or r have different null levels
        for i, (label, _) in enumerate(rows):
            if not math.isnan(nulls.get(label, math.nan)):
                ax.axhline(nulls[label], color=f"C{i % 10}", ls="--", lw=1)
    if drawn:
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no cin data")
    ax.set_xlabel("training step")
    ax.set_title(textwrap.fill(f"{table.question.id}: hack-ward gradient fraction vs null; {_band_note(rows)}", 70),
                 fontsize=9)
    ax.set_ylabel(axis_label("cin"), fontsize=8)
    _style_axes(ax, "cin")
    _save(fig, path)
