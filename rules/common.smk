# Config validation and the input functions that turn config into targets.
import os
import sys

from vhack.config import ConfigError, load_config
from vhack.experiments import expand_questions
from vhack.report import FIGURE_KINDS

try:
    config.update(load_config(config, base_dir=workflow.basedir))
except ConfigError as err:
    sys.exit(f"vhack: {err}")

RUNS, QUESTIONS = expand_questions(config)
REPORT_QUESTIONS = config.get("report_questions") or sorted(QUESTIONS)   # the default target's questions
THREADS = config.get("threads_per_job", 1)
TOY_MODELS = config.get("toy_models", {})


wildcard_constraints:
    problem_set="|".join(config["problem_sets"]),
    toy_model="|".join(TOY_MODELS) or "NONE",
    teacher="|".join(config["teachers"]),
    basis="|".join(config["bases"]),
    question="|".join(QUESTIONS) or "NONE",
    run="[A-Za-z0-9._+-]+",


def run_output(path):
    """A training output; write-protected once written when `protect_runs` is on (GPU presets)."""
    return protected(path) if config.get("protect_runs", False) else path


def problems_path(name):
    return f"data/problems/{name}.parquet"


def model_files(name):
    """Files a model depends on: a toy model's directory, nothing for a hub id."""
    spec = config["models"][name]
    return [f"{spec['path']}/model.safetensors"] if spec.get("toy") else []


def model_spec(name):
    return {"name": name, **config["models"][name]}


def basis_path(name):
    return f"results/bases/v_hack_{name}.safetensors"


def run_dir(run):
    return f"results/runs/{run}"


def toy_model_inputs(wildcards):
    spec = TOY_MODELS[wildcards.toy_model]
    inputs = {
        "tokenizer": "results/models/toy_tokenizer/tokenizer.json",
        "problems": problems_path(spec["problem_set"]),
    }
    if spec.get("init_from"):
        inputs["init"] = f"results/models/{spec['init_from']}/model.safetensors"
    return inputs


def train_inputs(wildcards):
    s = RUNS[wildcards.run].settings
    inputs = {"problems": problems_path(s["problem_set"]), "student": model_files(s["student"])}
    if s["mix"] > 0:
        inputs["teacher_cache"] = f"data/teacher_cache/{s['teacher']}.parquet"
    if s.get("basis"):
        inputs["basis"] = basis_path(s["basis"])
        inputs["pairs"] = config["pair_sets"][config["bases"][s["basis"]]["pairs"]]
    return inputs


def eval_inputs(wildcards):
    s = RUNS[wildcards.run].settings
    return {
        "problems": problems_path(s["problem_set"]),
        "student": model_files(s["student"]),
        "adapter": f"{run_dir(wildcards.run)}/adapter.safetensors",
    }


def run_params(wildcards):
    """Everything that changes a run's numbers; a change reruns exactly the affected runs."""
    spec = RUNS[wildcards.run]
    s = spec.settings
    params = {
        "run": spec.name,
        "arm": spec.arm,
        "seed": spec.seed,
        "settings": s,
        "student": model_spec(s["student"]),
        "adapter": config["adapters"][s["adapter"]],
        "loopholes": config["loopholes"],
        "grader": config["grader"],
        "rollout": config["rollout"],
    }
    if s.get("basis"):
        params["basis"] = {"name": s["basis"], **config["bases"][s["basis"]]}
    return params


def question_runs(question):
    return sorted({r for row in QUESTIONS[question].rows for r in row.runs})


def report_runs():
    return sorted({r for q in REPORT_QUESTIONS for r in question_runs(q)})


def run_outputs(runs):
    """A finished run: its evaluation (which needs the run's adapter, hence the whole run) and run.json."""
    return {
        "run_json": [f"{run_dir(r)}/run.json" for r in runs],
        "evals": [f"{run_dir(r)}/eval.parquet" for r in runs],
    }
