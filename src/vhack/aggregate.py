"""Collect finished runs into two tables: every step of every run, and one row per run.

Input, per run directory results/runs/{run}/: run.json (identity, resolved
settings, provenance), metrics.parquet (one row per training step) and,
optionally, eval.parquet (one row per loophole mode plus mode="all").

Output:
- metrics frame: the steps of all runs, with run, arm, seed, tags and one
  column per setting, so plots can select and group steps by any setting.
- runs frame: one row per run: identity, one column per setting (lists and
  dicts as JSON strings), `<metric>_last5` / `<metric>_whole` for every step
  metric, eval metrics, the full invocation, timing and git provenance.

A run whose files are missing or unreadable raises RunDataError naming the run
and the file; nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vhack.io import write_parquet
from vhack.metrics import LAST_N, REQUIRED_STEP_COLUMNS, summarize_steps

RUN_JSON, METRICS_FILE, EVAL_FILE = "run.json", "metrics.parquet", "eval.parquet"
IDENTITY = ("run", "arm", "seed", "tags")
RUN_COLUMNS = IDENTITY + ("status", "n_steps", "null_cin", "basis_control", "invocation", "snakemake", "started_at",
                          "finished_at", "wall_seconds", "git_commit", "git_dirty", "host", "device",
                          "versions", "run_dir")
SUMMARY_SUFFIXES = (f"_last{LAST_N}", "_whole")
EVAL_PREFIX = "eval_"
MAX_READERS = 8  # parquet decoding releases the GIL; more threads than this only add contention


class RunDataError(ValueError):
    """A run directory that cannot be aggregated; the message names the run and the file."""

    def __init__(self, run_dir: str | os.PathLike, file: str, problem: str):
        run_dir = Path(run_dir)
        super().__init__(
            f"run {run_dir.name!r}: {file} {problem} ({run_dir / file}). Re-run the run's train/evaluate "
            f"job (snakemake --forcerun) or remove {run_dir} from the aggregate's inputs.")
        self.run, self.file = run_dir.name, file


@dataclass
class RunRecord:
    info: dict[str, Any]          # run-level columns (RUN_COLUMNS) and eval metrics
    settings: dict[str, Any]      # resolved training settings, lists/dicts as JSON strings
    steps: pa.Table               # metrics.parquet, sorted by step


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    run_dir = Path(run_dir)
    meta = _read_run_json(run_dir)
    steps = _read_steps(run_dir)
    info = _run_info(run_dir, meta)
    info["n_steps"] = steps.num_rows
    info.update(_read_eval(run_dir))
    return RunRecord(info, _run_settings(run_dir, meta), steps)


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise RunDataError(run_dir, RUN_JSON, "is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDataError(run_dir, RUN_JSON, f"is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise RunDataError(run_dir, RUN_JSON, "is not a JSON object")
    missing = [k for k in ("run", "arm", "seed", "settings") if k not in meta]
    if missing:
        raise RunDataError(run_dir, RUN_JSON, f"lacks key(s) {missing}")
    if meta["run"] != run_dir.name:
        raise RunDataError(run_dir, RUN_JSON, f"names run {meta['run']!r}, not its directory's name")
    if not isinstance(meta["settings"], dict):
        raise RunDataError(run_dir, RUN_JSON, "key 'settings' is not an object")
    if meta.get("status", "complete") != "complete":
        raise RunDataError(run_dir, RUN_JSON, f"has status {meta['status']!r}, not 'complete'")
    return meta


def _read_steps(run_dir: Path) -> pa.Table:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RunDataError(run_dir, METRICS_FILE, "is missing")
    table = _read_parquet(run_dir, METRICS_FILE)
    columns = set(table.column_names)
    missing = [c for c in REQUIRED_STEP_COLUMNS if c not in columns]
    if missing:
        raise RunDataError(run_dir, METRICS_FILE, f"lacks column(s) {missing}")
    clashes = sorted(columns & set(IDENTITY))
    if clashes:
        raise RunDataError(run_dir, METRICS_FILE, f"has column(s) {clashes} reserved for run identity")
    if table.num_rows == 0:
        raise RunDataError(run_dir, METRICS_FILE, "has no steps")
    step = table["step"].to_numpy()
    if len(np.unique(step)) != len(step):
        raise RunDataError(run_dir, METRICS_FILE, "repeats a step")
    if np.any(np.diff(step) < 0):
        table = table.sort_by("step")
    return table


def _read_eval(run_dir: Path) -> dict[str, float]:
    path = run_dir / EVAL_FILE
    if not path.exists():
        return {}
    table = _read_parquet(run_dir, EVAL_FILE).to_pydict()  # a handful of rows: skip pandas
    missing = [c for c in ("mode", "hack_rate", "solve_rate") if c not in table]
    if missing:
        raise RunDataError(run_dir, EVAL_FILE, f"lacks column(s) {missing}")
    out: dict[str, float] = {}
    for i, mode in enumerate(table["mode"]):
        suffix = "" if mode == "all" else f"_{mode}"
        out[f"eval_hack{suffix}"] = float(table["hack_rate"][i])
        out[f"eval_solve{suffix}"] = float(table["solve_rate"][i])
        if mode == "all" and "n" in table:
            out["eval_n"] = int(table["n"][i])
    return out


def _read_parquet(run_dir: Path, file: str) -> pa.Table:
    try:  # ParquetFile.read skips read_table's dataset layer: ~30% faster on small files
        return pq.ParquetFile(run_dir / file).read(use_threads=False)  # threads: the pool over runs
    except (pa.ArrowException, OSError) as err:
        raise RunDataError(run_dir, file, f"is unreadable: {err}") from None


def _run_info(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    invocation, git = meta.get("invocation") or {}, meta.get("git") or {}
    started, finished = (_timestamp(run_dir, meta, k) for k in ("started_at", "finished_at"))
    wall = (finished - started).total_seconds() if started is not None and finished is not None else np.nan
    settings_tags = meta["settings"].get("tags") or []
    return {
        "run": meta["run"],
        "arm": meta["arm"],
        "seed": int(meta["seed"]),
        "tags": ",".join(sorted(set(meta.get("tags") or []) | set(settings_tags))),
        "status": meta.get("status", "complete"),
        "null_cin": float(meta["null_cin"]) if meta.get("null_cin") is not None else np.nan,
        "basis_control": _basis_control(meta),
        "invocation": shlex.join(invocation["argv"]) if invocation.get("argv") else "",
        "snakemake": invocation.get("snakemake", ""),
        "started_at": started,
        "finished_at": finished,
        "wall_seconds": wall,
        "git_commit": git.get("commit", ""),
        "git_dirty": git.get("dirty"),
        "host": meta.get("host", ""),
        "device": meta.get("device", ""),
        "versions": json.dumps(meta.get("versions") or {}, sort_keys=True),
        "run_dir": str(run_dir),
    }


def _basis_control(meta: dict[str, Any]) -> str:
    """The run's basis control (none, random, shuffled, nonhack); "" for a run without a basis."""
    basis = (meta.get("params") or {}).get("basis")
    return basis.get("control", "none") if basis else ""


def _timestamp(run_dir: Path, meta: dict[str, Any], key: str) -> pd.Timestamp | None:
    if not meta.get(key):
        return None
    try:
        stamp = pd.Timestamp(meta[key])
    except ValueError:
        raise RunDataError(run_dir, RUN_JSON, f"has {key} = {meta[key]!r}, not an ISO timestamp") from None
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def _run_settings(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    settings = {}
    for key, value in meta["settings"].items():
        if key == "tags":  # merged into the run's tags
            continue
        if key in IDENTITY[:3]:  # a copy of the identity is fine, a disagreeing one is not
            if value != meta[key]:
                raise RunDataError(run_dir, RUN_JSON, f"has settings.{key} = {value!r} but {key} = {meta[key]!r}")
            continue
        if key in RUN_COLUMNS or key.startswith(EVAL_PREFIX) or key.endswith(SUMMARY_SUFFIXES):
            raise RunDataError(run_dir, RUN_JSON, f"has setting {key!r}, a name reserved for a runs-table "
                                                  "column; rename the setting")
        settings[key] = json.dumps(value, sort_keys=True) if isinstance(value, (list, tuple, dict)) else value
    return settings


def setting_columns(runs: pd.DataFrame) -> list[str]:
    """The settings columns of a runs frame (everything that is not identity, provenance or a metric)."""
    return [c for c in runs.columns if c not in RUN_COLUMNS and not c.startswith(EVAL_PREFIX)
            and not c.endswith(SUMMARY_SUFFIXES)]


def _uniform_types(values: list[Any]) -> list[Any]:
    """A settings column must have one type for Parquet; mixed types (e.g. 0 vs "auto") become strings."""
    kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else type(v)
             for v in values if v is not None}
    if len(kinds) <= 1:
        return values
    return [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values]


def aggregate_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run directories into (metrics frame: one row per step, runs frame: one row per run)."""
    if not run_dirs:
        raise ValueError("no run directories to aggregate")
    run_dirs = sorted({Path(d) for d in run_dirs}, key=lambda d: d.name)
    names = [d.name for d in run_dirs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"run names appear in more than one directory: {duplicates}")
    with ThreadPoolExecutor(max_workers=min(MAX_READERS, len(run_dirs))) as pool:
        records = list(pool.map(read_run, run_dirs))
    runs = pd.DataFrame([r.info for r in records])
    settings = pd.DataFrame({key: _uniform_types([r.settings.get(key) for r in records])
                             for key in sorted({k for r in records for k in r.settings})})
    steps = _concat_steps(records, runs, settings)
    metric_names = [c for c in steps.columns if c not in IDENTITY and c != "step" and c not in settings.columns
                    and pd.api.types.is_numeric_dtype(steps[c])]
    summary = summarize_steps(steps, "run", metric_names).reindex(runs["run"]).reset_index(drop=True)
    eval_cols = sorted(c for c in runs.columns if c.startswith(EVAL_PREFIX))
    runs = pd.concat([runs[[c for c in RUN_COLUMNS if c in runs]], settings, summary, runs[eval_cols]], axis=1)
    return steps, runs


def _concat_steps(records: list[RunRecord], runs: pd.DataFrame, settings: pd.DataFrame) -> pd.DataFrame:
    """All steps of all runs, with each run's identity and settings repeated on its steps."""
    clashes = sorted(set(settings.columns) & {c for r in records for c in r.steps.column_names})
    if clashes:
        runs_with = [r.info["run"] for r in records if set(clashes) & set(r.steps.column_names)]
        raise ValueError(f"setting(s) {clashes} have the same name as a metrics.parquet column (runs "
                         f"{runs_with[:3]}...); rename the setting in config (train:) or the metric in the trainer")
    table = pa.concat_tables([r.steps for r in records], promote_options="permissive")
    steps = table.to_pandas()
    # row j of the concatenated steps belongs to run index[j]: repeat per-run values by it
    index = np.repeat(np.arange(len(records)), [r.steps.num_rows for r in records])
    per_run = pd.concat([runs[list(IDENTITY)], settings], axis=1)
    columns = {"run": pd.Categorical.from_codes(index, categories=runs["run"])}
    for name in per_run.columns[1:]:
        values = per_run[name]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            columns[name] = values.to_numpy()[index]
        else:  # strings: categorical codes keep 200k-row frames small and fast
            cat = pd.Categorical(values)
            columns[name] = pd.Categorical.from_codes(cat.codes[index], categories=cat.categories)
    front = pd.DataFrame(columns)
    return pd.concat([front, steps], axis=1)


def write_aggregate(run_dirs: Sequence[str | os.PathLike], metrics_out: str | os.PathLike,
                    runs_out: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aggregate run directories and write both frames atomically; returns (metrics, runs)."""
    steps, runs = aggregate_runs(run_dirs)
    write_parquet(metrics_out, steps)
    write_parquet(runs_out, runs)
    return steps, runs
