"""Runs and questions: turn config (train defaults, arms, questions) into run specs.

A run is one training job: an arm (a named bundle of settings), per-row
overrides, and a seed. Its name is readable and unique: the arm, every setting
that differs from the arm's own defaults, and the seed, e.g.
`projected__gate-no_gate__mix0.25__s41`. Two questions that need the same run
produce the same name, so Snakemake runs it once.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import ConfigError

ROW_KEYS = ("label", "arm")  # row keys that are not settings


@dataclass(frozen=True)
class RunSpec:
    name: str
    arm: str
    seed: int
    settings: dict[str, Any]           # fully resolved training settings (no seed)
    overrides: dict[str, Any] = field(default_factory=dict)  # what differs from the arm


@dataclass(frozen=True)
class QuestionRow:
    label: str
    arm: str
    overrides: dict[str, Any]
    runs: tuple[str, ...]             # one run name per seed


@dataclass(frozen=True)
class Question:
    id: str
    title: str
    why: str
    vary: tuple[str, ...]
    baseline: str
    rows: tuple[QuestionRow, ...]
    seeds: tuple[int, ...]
    fixed: dict[str, Any]
    notes: str = ""
    match: tuple[str, ...] = ()       # compare each row with the baseline-arm row sharing these settings
    metrics: tuple[str, ...] = ()     # extra metric columns (e.g. hack_s_exit_code)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    if value is None:
        return "none"
    return re.sub(r"[^A-Za-z0-9._+-]", "-", str(value))


def run_name(arm: str, overrides: Mapping[str, Any], seed: int) -> str:
    parts = [arm]
    for key in sorted(overrides):
        value = overrides[key]
        sep = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
        parts.append(f"{key}{sep}{_fmt(value)}")
    parts.append(f"s{seed}")
    return "__".join(parts)


def resolve_run(defaults: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]],
                arm: str, overrides: Mapping[str, Any], seed: int) -> RunSpec:
    if arm not in arms:
        raise ConfigError(f"unknown arm {arm!r}; declared arms: {sorted(arms)} (config key: arms)")
    base = {**defaults, **arms[arm]}
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f"unknown training setting(s) {unknown}; allowed: {sorted(base)} (config key: train)")
    diffs = {k: v for k, v in overrides.items() if base[k] != v}
    settings = {**base, **diffs}
    return RunSpec(run_name(arm, diffs, seed), arm, int(seed), settings, diffs)


def expand_questions(config: Mapping[str, Any]) -> tuple[dict[str, RunSpec], dict[str, Question]]:
    """All runs the declared questions need (deduplicated by name), and the questions."""
    defaults, arms = config["train"], config["arms"]
    seed_limit = config.get("seed_limit")
    runs: dict[str, RunSpec] = {}
    questions: dict[str, Question] = {}
    for qid, q in config.get("questions", {}).items():
        seeds = tuple(q["seeds"][: seed_limit or None])
        fixed = dict(q.get("fixed", {}))
        rows = []
        for row in q["rows"]:
            overrides = {**fixed, **{k: v for k, v in row.items() if k not in ROW_KEYS}}
            specs = [resolve_run(defaults, arms, row["arm"], overrides, s) for s in seeds]
            for spec in specs:
                runs.setdefault(spec.name, spec)
            rows.append(QuestionRow(row["label"], row["arm"], overrides, tuple(s.name for s in specs)))
        labels = [r.label for r in rows]
        if q["baseline"] not in labels:
            raise ConfigError(f"questions.{qid}.baseline {q['baseline']!r} is not a row label; rows: {labels}")
        questions[qid] = Question(qid, q["title"], q.get("why", ""), tuple(q.get("vary", ())),
                                  q["baseline"], tuple(rows), seeds, fixed, q.get("notes", ""),
                                  tuple(q.get("match", ())), tuple(q.get("metrics", ())))
    return runs, questions


TABLE_TARGET = re.compile(r"^results/(?P<question>[^/]+)_table\.md$")
RUN_TARGET = re.compile(r"^results/runs/(?P<run>[^/]+)(/|$)")


def _closest(name: str, names) -> str:
    """The declared name sharing the longest prefix with `name`, then the most similar."""
    def score(candidate: str) -> tuple[int, float]:
        prefix = len(os.path.commonprefix([name, candidate]))
        return prefix, difflib.SequenceMatcher(None, name, candidate).ratio()
    best = max(sorted(names), key=score, default=None)
    return f"did you mean {best!r}? " if best else ""


def check_targets(targets, runs: Mapping[str, RunSpec], questions: Mapping[str, Question]) -> None:
    """Refuse a target no question declares (a table or a run), naming the closest declared one."""
    errors = []
    for target in targets:
        path = str(target).removeprefix("./")
        table, run = TABLE_TARGET.match(path), RUN_TARGET.match(path)
        if table and table["question"] not in questions and table["question"] != "runs":
            errors.append(f"  {path}: no question {table['question']!r}; {_closest(table['question'], questions)}"
                          f"declared questions (config questions_file): {sorted(questions)}")
        elif run and run["run"] not in runs:
            errors.append(f"  {path}: no declared question needs a run {run['run']!r}; "
                          f"{_closest(run['run'], runs)}{len(runs)} runs are declared "
                          f"(results/runs_table.md lists them after a build)")
    if errors:
        raise ConfigError("unknown target:\n" + "\n".join(errors))
