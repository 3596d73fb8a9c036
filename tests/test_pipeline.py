"""The Snakemake workflow end to end on a shrunk toy config: builds, no-op reruns, targeted reruns, config errors."""

import json
import os
import re
import shlex
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
    """A copy of the workflow and the library (jobs import the copy's src/, so a test may edit it)."""
    for name in ("Snakefile", "rules", "workflow", "config", "profiles", "src"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def snakemake(workdir: Path, *targets: str, options: tuple[str, ...] = (), configs: tuple[str, ...] = (),
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *options,
           "--configfile", "config/config.yaml", str(SMOKE), *configs, "--", *targets]
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1500, env=env)
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
    done = snakemake(work, "results/q2_table.md")
    (work / "console.txt").write_text(done.stdout + done.stderr)   # what the terminal showed
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


def overlay(workdir: Path, name: str, settings: dict) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_typo_under_train_fails_the_dry_run_naming_key_file_and_suggestion(tmp_path):
    work = copy_workflow(tmp_path)
    done = snakemake(work, options=("-n",), configs=(overlay(work, "typo.yaml", {"train": {"stepz": 5}}),),
                     check=False)
    assert done.returncode != 0
    assert "train.stepz (in typo.yaml): unknown key; did you mean 'steps'?" in done.stdout + done.stderr
    assert not (work / "data").exists()


def test_unknown_targets_name_the_declared_questions_and_the_closest(tmp_path):
    work = copy_workflow(tmp_path)
    done = snakemake(work, "results/q99_table.md", options=("-n",), check=False)
    err = done.stdout + done.stderr
    assert done.returncode != 0 and "MissingRule" not in err
    assert "no question 'q99'; did you mean 'q9_overshoot'?" in err and "'q16_grad_vs_update'" in err
    done = snakemake(work, "results/runs/projected__s4/run.json", options=("-n",), check=False)
    err = done.stdout + done.stderr
    assert done.returncode != 0 and "KeyError" not in err
    assert "no declared question needs a run 'projected__s4'; did you mean 'projected__s41'?" in err


def test_no_teacher_rows_no_teacher_cache(tmp_path):
    """G=4, mix=0.1: round(0.4) = 0 teacher rows, so the DAG builds neither the cache nor the teacher."""
    work = copy_workflow(tmp_path)
    question = {"title": "t", "seeds": [41], "baseline": "v", "rows": [{"label": "v", "arm": "vanilla"}]}
    settings = {"train": {"group_size": 4, "mix": 0.1}, "questions": {"qx": question}, "report_questions": ["qx"]}
    jobs = planned(work, "results/qx_table.md", configs=(overlay(work, "mix.yaml", settings),))
    assert "cache_teacher" not in jobs and jobs["pretrain_toy_model"] == 1 and jobs["train"] == 1
    settings["train"]["mix"] = 0.125   # round(0.5) = 1 teacher row (halves round up)
    jobs = planned(work, "results/qx_table.md", configs=(overlay(work, "mix.yaml", settings),))
    assert jobs["cache_teacher"] == 1 and jobs["pretrain_toy_model"] == 2


def test_the_workflow_lints_clean(tmp_path):
    work = copy_workflow(tmp_path)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(work / "src")}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


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
    assert {"metrics.parquet", "run.json", "adapter.safetensors", "eval.parquet", "samples.parquet",
            "eval_samples.parquet", "tensorboard", "adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in run.iterdir()}
    assert planned(built, "results/q2_table.md") == {}


def test_runs_keep_their_completions_and_the_table_shows_heldout(built):
    from vhack.samples import EVAL_SAMPLE_COLUMNS, SAMPLE_COLUMNS
    from vhack.tracking import read_scalars
    run = built / "results/runs/vanilla__s41"
    samples, steps = pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "metrics.parquet")
    assert tuple(samples.columns) == SAMPLE_COLUMNS
    from vhack.specs import TrainingRun
    cfg = TrainingRun.from_params(json.loads((run / "run.json").read_text())["params"]).settings
    student = samples[samples.source == "student"]   # the smoke cache covers few problems: teacher rows vary
    assert len(student) == cfg.steps * cfg.prompts_per_step * cfg.student_rows
    assert (samples.source == "teacher").sum() <= cfg.steps * cfg.prompts_per_step * cfg.teacher_rows
    assert student.groupby("step")["exploited"].mean().tolist() == steps["hack_s"].tolist()
    evals = pd.read_parquet(run / "eval_samples.parquet")
    assert tuple(evals.columns) == EVAL_SAMPLE_COLUMNS and set(evals["prompt_mode"]) >= {"none"}
    assert len(evals) == 2 * pd.read_parquet(run / "eval.parquet").set_index("mode").at["all", "n"]
    assert set(read_scalars(run / "tensorboard")["tag"]) >= {"hack_s", "gt_s", "loss"}
    table = (built / "results/q2_table.md").read_text()
    assert "| row | hack (train) | solve (train) | eval hack | eval solve |" in table


def test_console_is_quiet_and_run_json_rebuilds_the_run(built):
    console = (built / "console.txt").read_text()
    assert "Shell command: None" not in console and '"hack_s":' not in console   # per-step metrics: logs only
    assert re.search(r"finished vanilla__s41: last-5 hack \d\.\d{3}, solve \d\.\d{3}", console)
    assert '"hack_s":' in (built / "logs/runs/vanilla__s41/train.log").read_text()
    invocation = json.loads((built / "results/runs/vanilla__s41/run.json").read_text())["invocation"]
    assert invocation["command"].startswith("snakemake --cores 2 ") and "results/q2_table.md" in invocation["command"]
    rebuild = shlex.split(invocation["rebuild"])
    assert rebuild[0] == "snakemake" and str(SMOKE) in rebuild
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", *rebuild[1:]], cwd=built,
                          capture_output=True, text=True, timeout=600)
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", done.stdout, re.M)) == {"train": "1", "total": "1"}, done.stdout


def test_mlflow_export_target_plans_one_export_after_every_run(built):
    """README: `snakemake --cores 2 results/mlflow/runs.json` (dry run: it needs every declared run)."""
    jobs = planned(built, "results/mlflow/runs.json")
    assert jobs.get("export_mlflow") == 1 and jobs.get("train", 0) > 0 and "question_table" not in jobs


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


Q2_RUNS = {"train": 3, "evaluate": 3, "question_table": 1}   # q2: vanilla, projected, projected refresh-2


def test_an_evaluation_setting_reruns_only_evaluations(built):
    jobs = planned(built, "results/q2_table.md", configs=(overlay(built, "eval.yaml", {"train": {"test_samples": 2}}),))
    assert jobs == {"evaluate": 3, "question_table": 1}


def test_compute_knobs_rerun_nothing(built):
    knobs = {"grader": {"workers": 1}, "compute": {"micro_batch_size": 4, "progress": False}, "threads_per_job": 2}
    assert planned(built, "results/q2_table.md", configs=(overlay(built, "compute.yaml", knobs),)) == {}


def test_a_basis_setting_reruns_the_basis_and_the_runs_using_it(built):
    jobs = planned(built, "results/q2_table.md", configs=(overlay(built, "k.yaml", {"bases": {"21pairs": {"k": 3}}}),))
    assert jobs == {"extract_basis": 1, **Q2_RUNS}


def test_a_nested_command_line_override_merges_into_its_section(built):
    """The README's example: --config 'train={steps: 5}' changes one setting and keeps the rest of `train`."""
    jobs = planned(built, "results/q2_table.md", options=("--config", "train={steps: 5}"))
    assert jobs == Q2_RUNS


def test_a_comment_in_the_library_reruns_nothing(built):
    trainer = built / "src/vhack/trainer.py"
    trainer.write_text(trainer.read_text() + "\n# a reviewer's note\n")
    assert planned(built, "results/q2_table.md") == {}


def test_editing_a_pair_set_reruns_only_bases_built_from_it(built):
    unused = built / "config/pairs/toy_18.yaml"
    unused.write_text(unused.read_text() + "\n# reviewed\n")
    assert planned(built, "results/q2_table.md") == {}          # q2 uses toy_21 only
    used = built / "config/pairs/toy_21.yaml"
    used.write_text(used.read_text() + "\n# reviewed\n")
    assert planned(built, "results/q2_table.md") == {"extract_basis": 1, **Q2_RUNS}


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
