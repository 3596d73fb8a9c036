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


def step_samples(step: int, rows: Sequence, advantages: Sequence[float]) -> list[dict[str, Any]]:
    """One record per row of a step (vhack.trainer.Row, in group order: student rows, then teacher rows)."""
    records, position = [], {}
    for row, advantage in zip(rows, advantages):
        index = position[row.group] = position.get(row.group, -1) + 1
        records.append({"step": step, "group": row.group, "row": index,
                        "source": "teacher" if row.off_policy else "student", "problem_id": row.problem_id,
                        "mode": row.mode, "completion": row.text, "num_tokens": row.num_tokens,
                        "reward": float(row.reward), "advantage": float(advantage),
                        **{k: row.grade.get(k) for k in GRADE_FLAGS}})
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
