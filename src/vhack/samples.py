"""The completions behind the numbers: every training row and every evaluation sample, as Parquet.

results/runs/{run}/samples.parquet holds one row per trained completion: the step's student
rollouts and the cached teacher rows it mixed in, in group order, with problem id, loophole
mode, completion text, reward, advantage and every grade flag (oracle verdict and its reason
included). eval_samples.parquet beside eval.parquet holds the held-out completions. Both are
zstd-compressed: completion text repeats a lot (the same hack in many rows) and compresses well.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vhack.grader import GRADE_FIELDS
from vhack.io import atomic_path

GRADE_FLAGS = tuple(f for f in GRADE_FIELDS if f not in ("mode", "reward"))  # passed, gt_correct, ..., error
SAMPLE_COLUMNS = ("step", "group", "row", "source", "problem_id", "mode", "completion", "num_tokens", "reward",
                  "advantage", *GRADE_FLAGS)
EVAL_SAMPLE_COLUMNS = ("problem_id", "mode", "prompt_mode", "sample_index", "completion", "num_tokens",
                       *(f for f in GRADE_FIELDS if f != "mode"))
COMPRESSION = "zstd"


def step_samples(step: int, problem_ids: Sequence[str], modes: Sequence[str], completions: Sequence,
                 teachers: Sequence[Sequence[Mapping[str, Any]]], grades: Sequence[Mapping[str, Any]],
                 rewards: Sequence[float], advantages: Sequence[float], student_rows: int) -> list[dict[str, Any]]:
    """One record per row of a step, in the trainer's group order (G_s student rows, then the teacher's).

    `grades`, `rewards` and `advantages` are per row in that order; `completions` are the student rollouts
    (prompt-major), `teachers` the cached teacher rows per group (dicts of the cache's columns).
    """
    records, i = [], 0
    for group, (problem_id, mode) in enumerate(zip(problem_ids, modes)):
        student = completions[group * student_rows:(group + 1) * student_rows]
        texts = [("student", c.text, c.num_tokens) for c in student]
        texts += [("teacher", t["completion"], t.get("num_tokens")) for t in teachers[group]]
        for row, (source, text, n_tokens) in enumerate(texts):
            grade = grades[i]
            if source == "teacher":  # the cache row carries every grade field the cache has
                grade = {**grade, **{k: v for k, v in teachers[group][row - len(student)].items()
                                     if k in GRADE_FIELDS}}
            records.append({"step": step, "group": group, "row": row, "source": source, "problem_id": problem_id,
                            "mode": mode, "completion": text, "num_tokens": n_tokens,
                            "reward": float(rewards[i]), "advantage": float(advantages[i]),
                            **{k: grade.get(k) for k in GRADE_FLAGS}})
            i += 1
    return records


def write_samples(path: str | os.PathLike, records: Sequence[Mapping[str, Any]] | pd.DataFrame,
                  columns: Sequence[str] = SAMPLE_COLUMNS) -> None:
    """Write sample records atomically as zstd-compressed Parquet, columns in `columns` order."""
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records), columns=list(columns))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)


def read_samples(path: str | os.PathLike, columns: Sequence[str] | None = None,
                 filters: list | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=list(columns) if columns else None, filters=filters).to_pandas()


def example_hacks(samples: pd.DataFrame, last_steps: int, per_mode: int) -> dict[str, pd.DataFrame]:
    """Per loophole mode: up to `per_mode` distinct student hacks from the last `last_steps` steps, latest first."""
    if samples.empty:
        return {}
    late = samples[(samples["step"] > samples["step"].max() - last_steps) & (samples["source"] == "student")
                   & samples["exploited"].astype(bool)]
    late = late.sort_values(["step", "group", "row"], ascending=[False, True, True])
    return {mode: rows.drop_duplicates("completion").head(per_mode) for mode, rows in late.groupby("mode")}
