"""Scale benchmark: aggregate 1,000 synthetic runs x 200 steps and build every table.

Usage: .venv/bin/python benchmarks/aggregate_scale.py [--runs 1000] [--steps 200]

Writes the run directories to a temporary folder (not timed), then times
write_aggregate (read every run, write metrics.parquet and runs.parquet) plus
every question table and the runs table. Goal: <= 5 s on the 2-core dev machine.
Prints `aggregate_seconds=<s>`, then `dryrun_seconds=<s>` (a `snakemake -n` over a grid of
2,000 training jobs) as the very last line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic run writer lives with the test fixtures

from fixtures.synthetic_runs import START, load_fixture, write_run  # noqa: E402
from vhack.aggregate import write_aggregate  # noqa: E402
from vhack.experiments import expand_questions  # noqa: E402
from vhack.tables import question_table, runs_table  # noqa: E402


def synthetic_grid(n_runs: int):
    """The fixture's questions with enough seeds that their runs number at least n_runs."""
    config = load_fixture()
    n_configs = len(expand_questions(config)[0]) // len(config["questions"]["q1"]["seeds"])
    seeds = list(range(1, n_runs // max(n_configs, 1) + 2))
    while True:
        for q in config["questions"].values():
            q["seeds"] = seeds
        runs, questions = expand_questions(config)
        if len(runs) >= n_runs:
            return runs, questions
        seeds.append(seeds[-1] + 1)


def write_runs(root: Path, n_runs: int, steps: int):
    runs, questions = synthetic_grid(n_runs)
    rng = np.random.default_rng(0)
    names = sorted(runs, key=lambda n: (runs[n].seed, n))[:n_runs]
    dirs = [write_run(root, runs[n], rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.4), steps=steps,
                      started_at=START + np.timedelta64(i, "m")) for i, n in enumerate(names)]
    return dirs, questions


def time_aggregate(dirs: list[Path], questions, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    _, runs = write_aggregate(dirs, out / "metrics.parquet", out / "runs.parquet")
    t1 = time.perf_counter()
    for q in questions.values():
        question_table(runs, q).markdown
    t2 = time.perf_counter()
    runs_table(runs)
    t3 = time.perf_counter()
    return {"read_and_write": t1 - t0, "question_tables": t2 - t1, "runs_table": t3 - t2, "total": t3 - t0}


def time_snakemake_dryrun(n_rows: int = 50, n_seeds: int = 40) -> float:
    """Seconds for `snakemake -n` over a grid question of n_rows x n_seeds training runs (+ their evaluations)."""
    import subprocess

    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        questions = {"questions": {"grid": {
            "title": "lr grid", "vary": ["lr"], "seeds": list(range(n_seeds)), "baseline": "lr 1",
            "rows": [{"label": f"lr {i}", "arm": "projected", "lr": round(1e-3 * i, 6)} for i in range(1, n_rows + 1)],
        }}}
        qfile, cfile = Path(tmp) / "questions.yaml", Path(tmp) / "config.yaml"
        qfile.write_text(yaml.safe_dump(questions))
        cfile.write_text(yaml.safe_dump({"questions_file": str(qfile), "seed_limit": None}))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(cfile),
               "--quiet", "all", "--", "results/grid_table.md"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"snakemake dry run failed:\n{done.stderr[-2000:]}")
        print(f"dry run of {n_rows * n_seeds} training jobs (+ as many evaluations): {seconds:.2f} s")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vhack-aggregate-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dirs, questions = write_runs(tmp / "runs", args.runs, args.steps)
        print(f"wrote {len(dirs)} runs x {args.steps} steps in {time.perf_counter() - t0:.1f} s (not timed)")
        times = time_aggregate(dirs, questions, tmp)
        print(f"read+write aggregate {times['read_and_write']:.2f} s, {len(questions)} question tables "
              f"{times['question_tables']:.2f} s, runs table {times['runs_table']:.2f} s")
        print(f"aggregate_seconds={times['total']:.2f}")
    print(f"dryrun_seconds={time_snakemake_dryrun():.2f}")


if __name__ == "__main__":
    main()
