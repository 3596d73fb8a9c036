"""What a target will cost before running it: GPU jobs and estimated GPU-hours.

    python -m vhack.cost --configfile config/presets/fast.yaml -- results/q2_table.md

runs `snakemake -n` with the same arguments, reads the planned jobs (rule, wildcards, `gpu` resource) and
gives each job a time: its own `benchmark:` file when one exists (a rerun), else the median of the rule's
benchmark files under benchmarks/out (jobs measured in this workdir), else the config's `cost` defaults
(`job_s` per rule, plus `train_step_s` per training step). A workdir holds one regime's outputs (run paths
do not name the regime), so its benchmark files measure that regime.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", re.M)
RULE_BLOCK = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.M | re.S)
BENCHMARK = re.compile(r"benchmark:\s*\n\s*\"([^\"]+)\"")


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: dict[str, str]
    gpus: int


@dataclass(frozen=True)
class Estimate:
    job: PlannedJob
    seconds: float
    source: str  # own benchmark | measured median of N | config default


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(", ") if "=" in item)


def planned_jobs(dry_run_output: str) -> list[PlannedJob]:
    """The jobs in `snakemake -n` output, with wildcards and GPU count."""
    jobs = []
    for rule, body in JOB.findall(dry_run_output):
        fields = dict(line.strip().split(": ", 1) for line in body.splitlines() if ": " in line)
        resources = _pairs(fields.get("resources", ""))
        jobs.append(PlannedJob(rule, _pairs(fields.get("wildcards", "")), int(resources.get("gpu", 0))))
    return jobs


def benchmark_patterns(rules_dir: Path) -> dict[str, str]:
    """rule -> its `benchmark:` path pattern, read from the workflow's rule files."""
    patterns = {}
    for path in sorted(rules_dir.glob("*.smk")):
        for rule, body in RULE_BLOCK.findall(path.read_text()):
            found = BENCHMARK.search(body)
            if found:
                patterns[rule] = found.group(1)
    return patterns


def benchmark_seconds(path: Path) -> float:
    """Mean wall seconds over a snakemake benchmark file's repeats."""
    return float(pd.read_csv(path, sep="\t")["s"].mean())


def default_seconds(job: PlannedJob, cost: Mapping[str, Any], runs: Mapping[str, Any]) -> float | None:
    base = cost.get("job_s", {}).get(job.rule)
    if base is None:
        return None
    if job.rule == "train" and job.wildcards.get("run") in runs:
        return base + cost.get("train_step_s", 0) * runs[job.wildcards["run"]].settings["steps"]
    return base


def estimate(jobs: list[PlannedJob], patterns: Mapping[str, str], workdir: Path, cost: Mapping[str, Any],
             runs: Mapping[str, Any]) -> list[Estimate]:
    measured = {rule: [benchmark_seconds(p) for p in sorted(workdir.glob(re.sub(r"\{\w+\}", "*", pat)))]
                for rule, pat in patterns.items()}
    estimates = []
    for job in jobs:
        own = workdir / patterns[job.rule].format(**job.wildcards) if job.rule in patterns else None
        if own is not None and own.exists():
            estimates.append(Estimate(job, benchmark_seconds(own), "own benchmark"))
        elif measured.get(job.rule):
            estimates.append(Estimate(job, statistics.median(measured[job.rule]),
                                      f"measured median of {len(measured[job.rule])}"))
        else:
            seconds = default_seconds(job, cost, runs)
            estimates.append(Estimate(job, seconds or 0.0, "config default" if seconds is not None else "no estimate"))
    return estimates


def config_files(snakemake_args: list[str]) -> list[str]:
    """The --configfile arguments, after the Snakefile's config/config.yaml (as snakemake merges them)."""
    files, taking = ["config/config.yaml"], False
    for arg in snakemake_args:
        if arg in ("--configfile", "--configfiles"):
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking:
            files.append(arg)
    return files


def merge(base: dict, overlay: Mapping) -> dict:
    for key, value in overlay.items():
        base[key] = merge(dict(base.get(key) or {}), value) if isinstance(value, Mapping) else value
    return base


def summary(estimates: list[Estimate]) -> str:
    """A per-rule table of GPU jobs, then one line `gpu_jobs=<n> gpu_hours=<h>`."""
    gpu = [e for e in estimates if e.job.gpus > 0]
    lines = [f"{'rule':<20} {'jobs':>5} {'GPU-h':>8}  time source", "-" * 60]
    for rule in dict.fromkeys(e.job.rule for e in gpu):
        mine = [e for e in gpu if e.job.rule == rule]
        hours = sum(e.seconds * e.job.gpus for e in mine) / 3600
        sources = ", ".join(f"{n}x {s}" for s, n in
                            pd.Series([e.source for e in mine]).value_counts().items())
        lines.append(f"{rule:<20} {len(mine):>5} {hours:>8.2f}  {sources}")
    cpu_jobs = len(estimates) - len(gpu)
    total = sum(e.seconds * e.job.gpus for e in gpu) / 3600
    lines.append(f"({cpu_jobs} CPU jobs not counted)")
    lines.append(f"gpu_jobs={len(gpu)} gpu_hours={total:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="python -m vhack.cost [snakemake args, e.g. --configfile X -- target]")
    parser.add_argument("--workdir", default=".", help="the workflow directory (default: here)")
    own, snakemake_args = parser.parse_known_args(argv)
    workdir = Path(own.workdir)
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", *snakemake_args], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        return done.returncode
    from .config import load_config
    from .experiments import expand_questions

    config: dict = {}
    for path in config_files(snakemake_args):
        merge(config, yaml.safe_load((workdir / path).read_text()) or {})
    config = load_config(config, base_dir=workdir)
    runs, _ = expand_questions(config)
    jobs = planned_jobs(done.stdout + done.stderr)
    estimates = estimate(jobs, benchmark_patterns(workdir / "rules"), workdir, config.get("cost", {}), runs)
    print(summary(estimates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
