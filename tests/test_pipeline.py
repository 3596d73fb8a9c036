"""The Snakemake workflow end to end on a shrunk toy config: builds, no-op reruns, targeted reruns, config errors."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "tests" / "fixtures" / "smoke_config.yaml"
pytestmark = pytest.mark.slow


def copy_workflow(dst: Path) -> Path:
    for name in ("Snakefile", "rules", "workflow", "config", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def snakemake(workdir: Path, *targets: str, options: tuple[str, ...] = (), configs: tuple[str, ...] = (),
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *options,
           "--configfile", "config/config.yaml", str(SMOKE), *configs, "--", *targets]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1500)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {cmd[3:]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def planned(workdir: Path, *targets: str, options: tuple[str, ...] = (), configs: tuple[str, ...] = ()
            ) -> dict[str, int]:
    """Job counts per rule that a dry run would execute."""
    out = snakemake(workdir, *targets, options=("-n", "--quiet", "rules", *options), configs=configs).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workflow copy with the Q2 table built (problems, toy models, cache, basis, 3 runs, evaluations)."""
    work = copy_workflow(tmp_path_factory.mktemp("pipeline"))
    snakemake(work, "results/q2_table.md")
    return work


def test_bad_config_fails_before_any_job(tmp_path):
    work = copy_workflow(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"loopholes": {"modes": ["run_tests", "telepathy"]},
                                   "train": {"prompts_per_step": -1}}))
    done = snakemake(work, options=("-n",), configs=(str(bad),), check=False)
    assert done.returncode != 0
    err = done.stdout + done.stderr
    assert "loopholes.modes.1" in err and "telepathy" in err and "allowed" in err
    assert not (work / "data" / "problems").exists()


def test_missing_leetcode_file_names_where_to_put_it(tmp_path):
    work = copy_workflow(tmp_path)
    extra = tmp_path / "lc.yaml"
    extra.write_text(yaml.safe_dump({"problem_sets": {"leetcode": {"source": "leetcode", "path": "data/lc.jsonl"}}}))
    done = snakemake(work, options=("-n",), configs=(str(extra),), check=False)
    assert done.returncode != 0 and "data/lc.jsonl" in done.stdout + done.stderr
    assert "rl-rewardhacking" in done.stdout + done.stderr


def test_problem_sets_build_and_second_run_does_nothing(tmp_path):
    work = copy_workflow(tmp_path)
    snakemake(work, "data/problems/toy.parquet", "data/problems/humaneval.parquet")
    toy = pd.read_parquet(work / "data/problems/toy.parquet")
    assert (toy.split == "train").sum() >= 500 and (toy.split == "test").sum() >= 100
    assert len(pd.read_parquet(work / "data/problems/humaneval.parquet")) == 164
    assert planned(work, "data/problems/toy.parquet", "data/problems/humaneval.parquet") == {}


def test_default_target_builds_the_report_questions_and_all_questions_builds_every_table(tmp_path):
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config/config.yaml").read_text())
    questions = yaml.safe_load((work / "config/questions.yaml").read_text())["questions"]
    report = config["report_questions"]
    assert set(report) < set(questions)
    assert planned(work)["question_table"] == len(report)
    assert planned(work, "all_questions")["question_table"] == len(questions)
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump({"report_questions": ["q5"]}))
    assert planned(work, configs=(str(one),))["question_table"] == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"report_questions": ["q99"]}))
    done = snakemake(work, options=("-n",), configs=(str(unknown),), check=False)
    assert done.returncode != 0 and "report_questions = 'q99'" in done.stdout + done.stderr


def test_q2_table_and_noop_rerun(built):
    table = (built / "results/q2_table.md").read_text()
    for label in ("vanilla", "projected frozen-V", "projected refresh-2"):
        assert label in table
    cache = pd.read_parquet(built / "data/teacher_cache/toy_teacher.parquet")
    assert {"problem_id", "mode", "completion", "exploited", "gt_correct", "reward", "teacher"} <= set(cache.columns)
    run = built / "results/runs/projected__s41"
    assert {"metrics.parquet", "run.json", "adapter.safetensors", "eval.parquet"} <= {p.name for p in run.iterdir()}
    assert planned(built, "results/q2_table.md") == {}


def test_changing_teacher_temperature_reruns_the_cache_and_what_uses_it(built):
    override = built / "temp.yaml"
    override.write_text(yaml.safe_dump({"teachers": {"toy_teacher": {"temperature": 0.7}}}))
    jobs = planned(built, "results/q2_table.md", configs=(str(override),))
    assert jobs.get("cache_teacher") == 1
    assert "pretrain_toy_model" not in jobs and "extract_basis" not in jobs and "build_problems" not in jobs
    assert planned(built, "data/teacher_cache/toy_teacher.parquet", configs=(str(override),)) == {
        "cache_teacher": 1}


def test_forcerun_extract_basis_reruns_exactly_its_dependents(built):
    jobs = planned(built, "results/q2_table.md", options=("--forcerun", "extract_basis"))
    assert jobs == {"extract_basis": 1, "train": 3, "evaluate": 3, "question_table": 1}


def test_editing_a_pair_set_reruns_only_bases_built_from_it(built):
    unused = built / "config/pairs/toy_18.yaml"
    unused.write_text(unused.read_text() + "\n# reviewed\n")
    assert planned(built, "results/q2_table.md") == {}          # q2 uses toy_21 only
    used = built / "config/pairs/toy_21.yaml"
    used.write_text(used.read_text() + "\n# reviewed\n")
    jobs = planned(built, "results/q2_table.md")
    assert jobs.get("extract_basis") == 1 and jobs.get("train") == 3


def test_protect_runs_write_protects_a_finished_run(built):
    """Runs last (it edits the built copy): with `protect_runs` a finished run's outputs become read-only."""
    override = built / "protect.yaml"
    override.write_text(yaml.safe_dump({"protect_runs": True}))
    run = built / "results/runs/vanilla__s41"
    assert (run / "metrics.parquet").stat().st_mode & 0o200  # built without protection
    snakemake(built, "results/runs/vanilla__s41/metrics.parquet", options=("--forcerun", "train"),
              configs=(str(override),))
    for name in ("metrics.parquet", "run.json", "adapter.safetensors"):
        assert not (run / name).stat().st_mode & 0o222, name
