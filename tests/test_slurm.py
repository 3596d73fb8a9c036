"""SLURM through snakemake-executor-plugin-slurm, on a real cluster (.ci/slurm_test.sh starts one).

Skipped unless `sbatch` is on PATH, a node is up and the plugin is installed. The test cluster has
no job database: sacct reads its job-completion log (`sacct --completion`), and the plugin polls job
states with squeue (its default, sacct, needs slurmdbd).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"
# The smallest target that trains: the q2 vanilla run (default settings, first seed).
PIPELINE_TARGET = os.environ.get("VHACK_SLURM_PIPELINE_TARGET", "results/runs/vanilla__s41/metrics.parquet")
GPU_RULES = {"train", "evaluate", "extract_basis", "cache_teacher", "pretrain_toy_model"}
# How scontrol shows a one-GPU request (Slurm 22.05 writes gres:gpu:1, later versions gres/gpu:1).
GPU_REQUEST = re.compile(r"TresPerJob=gres[:/]gpu:1\b")
# Sized for the test node (2 CPUs, fake GPUs); a real cluster keeps the profile's defaults.
TEST_NODE_ENV = {"VHACK_SLURM_CPUS_PER_GPU": "1", "VHACK_SLURM_GPU_MEM_MB": "4000"}
# Plumbing, not science: short pretraining keeps the pipeline test to minutes on 2 CPUs.
SHORT_PRETRAINING = """\
toy_models:
  toy_student: {steps: 40, warmup_steps: 5}
  toy_teacher: {steps: 20, warmup_steps: 5}
"""


def _run(cmd: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (start a test cluster with .ci/slurm_test.sh)"
    if _run(["scontrol", "ping"], timeout=10).returncode != 0:  # instant; sinfo would retry for ~9 s
        return "slurmctld not answering (scontrol ping); run .ci/slurm_setup.sh"
    states = _run(["sinfo", "-h", "-o", "%T"], timeout=30).stdout.split()
    if not {"idle", "mixed", "allocated"} & set(states):
        return f"no SLURM node up (sinfo states: {states or 'none'}); run .ci/slurm_setup.sh"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install snakemake-executor-plugin-slurm)"
    return None


CLUSTER_PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(CLUSTER_PROBLEM is not None, reason=CLUSTER_PROBLEM or "")]


def _status_command() -> str:
    """sacct where it has a job database to read, else squeue (slurmctld keeps jobs MinJobAge seconds)."""
    return "sacct" if _run(["sacct", "-n", "-X"]).returncode == 0 else "squeue"


def snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run snakemake in `workdir` with fast status polling; fail the test with its log on error."""
    cmd = [sys.executable, "-m", "snakemake", *args,
           "--slurm-status-command", _status_command(),
           "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs"]
    proc = _run(cmd, timeout=timeout, cwd=workdir, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"snakemake failed ({' '.join(cmd)}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


def submitted_job_ids(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)


def sacct_records(job_ids: list[str], wait_s: float = 20) -> dict[str, dict[str, str]]:
    """JobID -> {name, state} from sacct; the completion log (-c) when there is no job database."""
    fields = ["JobIDRaw", "JobName", "State"]
    deadline = time.time() + wait_s
    while True:
        records = {}
        for extra in ([], ["--completion"]):
            proc = _run(["sacct", *extra, "-X", "-P", "-n", "-o", ",".join(fields), "-j", ",".join(job_ids)])
            if proc.returncode == 0:
                for line in proc.stdout.splitlines():
                    job_id, name, state = line.split("|")[:3]
                    records[job_id] = {"name": name, "state": state}
                break
        if set(job_ids) <= set(records) or time.time() > deadline:  # completion lines land as jobs end
            return records
        time.sleep(1)


def scontrol_job(job_id: str) -> str:
    return _run(["scontrol", "show", "job", job_id]).stdout


def rule_of(job_text: str) -> str:
    """The rule behind a job: the plugin's comment is rule_<rule>[_wildcards_<wildcards>]."""
    return re.search(r"Comment=rule_(\w+?)(?:_wildcards_|\s)", job_text).group(1)


def write_workflow(workdir: Path, text: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "Snakefile").write_text(textwrap.dedent(text))
    return workdir


def test_one_rule_runs_as_a_slurm_job(tmp_path):
    workdir = write_workflow(tmp_path / "plain", """
        rule hello:
            output: "hello.txt"
            shell: "echo job=$SLURM_JOB_ID host=$(hostname -s) > {output}"
    """)
    prefix = f"vhacktest{uuid.uuid4().hex[:8]}"
    proc = snakemake(workdir, "--executor", "slurm", "--jobs", "1", "--slurm-jobname-prefix", prefix)

    job_ids = submitted_job_ids(proc)
    assert len(job_ids) == 1, proc.stderr[-3000:]
    assert (workdir / "hello.txt").read_text().startswith(f"job={job_ids[0]} ")  # ran inside that job
    records = sacct_records(job_ids)
    assert records[job_ids[0]]["state"] == "COMPLETED"
    assert records[job_ids[0]]["name"].startswith(prefix)


def test_profile_requests_gpus_and_keeps_local_rules_local(tmp_path):
    # Named like the project's rules, so profiles/slurm gives `train` its GPU request.
    workdir = write_workflow(tmp_path / "profiled", """
        localrules: report

        rule report:
            input: "trained.txt", "problems.txt"
            output: "report.txt"
            shell: "echo local_job=${{SLURM_JOB_ID:-none}} > {output}; cat {input} >> {output}"

        rule train:
            input: "problems.txt"
            output: "trained.txt"
            threads: 1
            shell: "echo train=$SLURM_JOB_ID > {output}"

        rule build_problems:
            output: "problems.txt"
            shell: "echo build_problems=$SLURM_JOB_ID > {output}"
    """)
    proc = snakemake(workdir, "--workflow-profile", str(PROFILE), env=TEST_NODE_ENV)

    report = (workdir / "report.txt").read_text().splitlines()
    assert report[0] == "local_job=none"                      # the local rule never went to SLURM
    job_of = dict(line.split("=") for line in report[1:])
    assert sorted(job_of.values()) == sorted(submitted_job_ids(proc))
    assert all(r["state"] == "COMPLETED" for r in sacct_records(list(job_of.values())).values())

    train_job = scontrol_job(job_of["train"])                  # MinJobAge keeps finished jobs here
    assert GPU_REQUEST.search(train_job), train_job
    assert re.search(r"CpusPerTres=gres[:/]gpu:1\b", train_job), train_job    # VHACK_SLURM_CPUS_PER_GPU
    assert re.search(r"TimeLimit=12:00:00\b", train_job), train_job   # the profile's 720 min for train
    cpu_job = scontrol_job(job_of["build_problems"])
    assert "TresPerJob" not in cpu_job, cpu_job
    assert re.search(r"TimeLimit=01:00:00\b", cpu_job), cpu_job        # default-resources runtime


@pytest.fixture(scope="module")
def pipeline_workdir() -> Iterator[Path]:
    """A scratch working directory for the project's pipeline (results stay out of the repo)."""
    # Not under pytest's tmp dir: a 0700 parent under /tmp on sys.path (Snakemake puts
    # .snakemake/scripts there) stops vhack.sandbox's fork-server from starting.
    workdir = Path(tempfile.mkdtemp(prefix="vhack-slurm-pipeline-"))
    workdir.chmod(0o755)
    (workdir / "config").symlink_to(REPO / "config")   # files the config names by relative path
    (workdir / "short_pretraining.yaml").write_text(SHORT_PRETRAINING)
    yield workdir
    shutil.rmtree(workdir)


@pytest.mark.slow
def test_pipeline_training_run_on_slurm(pipeline_workdir):
    args = [PIPELINE_TARGET, "-s", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILE),
            "--configfile", "config/config.yaml", "short_pretraining.yaml"]
    dry = _run([sys.executable, "-m", "snakemake", *args, "-n", "--quiet", "rules"],
               cwd=pipeline_workdir, timeout=300)
    if dry.returncode != 0:
        pytest.skip(f"the toy pipeline does not dry-run {PIPELINE_TARGET} yet: "
                    f"{(dry.stderr or dry.stdout).strip()[-600:]}")

    # --jobs 1: one heavy process at a time on a 2-core machine.
    proc = snakemake(pipeline_workdir, *args, "--jobs", "1", env=TEST_NODE_ENV, timeout=3600)
    assert (pipeline_workdir / PIPELINE_TARGET).stat().st_size > 0
    job_ids = submitted_job_ids(proc)
    records = sacct_records(job_ids)
    assert set(records) == set(job_ids) and all(r["state"] == "COMPLETED" for r in records.values())
    jobs = {j: scontrol_job(j) for j in job_ids}                # MinJobAge keeps finished jobs here
    rules = {j: rule_of(text) for j, text in jobs.items()}
    assert GPU_RULES - {"evaluate"} <= set(rules.values()), rules   # evaluate is not upstream of metrics
    for job_id, text in jobs.items():
        assert bool(GPU_REQUEST.search(text)) == (rules[job_id] in GPU_RULES), text
