"""`python -m vhack.cost`: GPU jobs and GPU-hours of a target from the dry run, benchmark files and defaults."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_tracked
from vhack.cost import PlannedJob, benchmark_patterns, config_files, default_seconds, planned_jobs
from vhack.experiments import RunSpec


def test_benchmark_patterns_come_from_the_rule_files():
    patterns = benchmark_patterns(REPO / "rules")
    assert patterns["train"] == "benchmarks/out/runs/{run}/train.tsv"
    assert patterns["cache_teacher"] == "benchmarks/out/teacher/{teacher}.tsv"
    assert "question_table" not in patterns


def test_planned_jobs_read_rule_wildcards_and_gpus():
    out = ("rule train:\n    output: a\n    jobid: 3\n    wildcards: run=vanilla__s41\n"
           "    resources: tmpdir=/tmp, gpu=1\nShell command: None\n\n"
           "localrule aggregate:\n    input: a\n    resources: tmpdir=/tmp\n\n")
    assert planned_jobs(out) == [PlannedJob("train", {"run": "vanilla__s41"}, 1), PlannedJob("aggregate", {}, 0)]


def test_train_default_scales_with_the_runs_steps():
    runs = {"r": RunSpec("r", "vanilla", 41, {"steps": 200})}
    cost = {"job_s": {"train": 100}, "train_step_s": 96}
    assert default_seconds(PlannedJob("train", {"run": "r"}, 1), cost, runs) == 100 + 96 * 200
    assert default_seconds(PlannedJob("evaluate", {"run": "r"}, 1), cost, runs) is None


def test_config_files_follow_snakemakes_order():
    args = ["--cores", "4", "--configfile", "a.yaml", "b.yaml", "-n", "--", "t"]
    assert config_files(args) == ["config/config.yaml", "a.yaml", "b.yaml"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return copy_tracked(tmp_path_factory.mktemp("cost"))


def cost(work, *args):
    done = subprocess.run([sys.executable, "-m", "vhack.cost", *args], cwd=work, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(work / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_estimate_counts_the_planned_gpu_jobs_and_prefers_measured_times(work):
    target = ("--", "results/q2_table.md")
    quiet = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *target], cwd=work,
                           capture_output=True, text=True, env={"PYTHONPATH": str(work / "src")}).stdout
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", quiet, re.M) if m[0] != "total"}
    gpu_rules = ("pretrain_toy_model", "cache_teacher", "extract_basis", "train", "evaluate")
    config = yaml.safe_load((work / "config/config.yaml").read_text())
    job_s, step_s, steps = config["cost"]["job_s"], config["cost"]["train_step_s"], config["train"]["steps"]
    others = sum(job_s[r] * counts[r] for r in gpu_rules if r != "train")
    n = counts["train"]
    q2 = yaml.safe_load((work / config["questions_file"]).read_text())["questions"]["q2"]
    assert n == len(q2["rows"]) * len(q2["seeds"])

    out = cost(work, *target)
    assert f"gpu_jobs={sum(counts[r] for r in gpu_rules)} " in out
    train_h = n * (job_s["train"] + step_s * steps) / 3600
    assert re.search(rf"^train\s+{n}\s+{train_h:.2f}\s+{n}x config default$", out, re.M), out
    assert f"gpu_hours={(others + 3600 * train_h) / 3600:.2f}" in out

    bench = work / "benchmarks/out/runs/vanilla__s41/train.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n7000.0\t1:56:40\t1\n7400.0\t2:03:20\t1\n")  # two repeats: mean 7200
    out = cost(work, *target)
    assert re.search(rf"^train\s+{n}\s+{2 * n:.2f}\s+({n - 1}x measured median of 1, 1x own benchmark"
                     rf"|1x own benchmark, {n - 1}x measured median of 1)$", out, re.M), out
    assert f"gpu_hours={(others + n * 7200) / 3600:.2f}" in out
