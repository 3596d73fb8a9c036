# Config validation and the input functions that turn config into targets.
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import update_config

from vhack import specs
from vhack.config import ConfigError, load_config, typed_values
from vhack.experiments import check_targets, expand_questions
from vhack.hub import hub_models, hub_settings, weight_sources
from vhack.provenance import export_invocation
from vhack.report import FIGURE_KINDS


def shown_path(path):
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def config_sources():
    """What was merged into `config`, in order: the Snakefile's configfile, each --configfile, --config."""
    cli_files = [str(f) for f in workflow.config_settings.configfiles]
    files = [str(f) for f in workflow.configfiles[len(cli_files):]] + cli_files
    sources = [(shown_path(f), yaml.safe_load(Path(f).read_text()) or {}) for f in files]
    return sources + [("--config", typed_values(dict(workflow.config_settings.config)))]


SOURCES = config_sources()
update_config(config, SOURCES[-1][1])   # nested --config values as YAML types, merged deeply
try:
    config.update(load_config(config, base_dir=workflow.basedir, sources=SOURCES))
    RUNS, QUESTIONS = expand_questions(config)
    specs.check_specs(config, RUNS)
except ConfigError as err:
    sys.exit(f"vhack: {err}")

export_invocation(sys.argv, workflow.config_settings.configfiles, workflow.config_settings.config_args)
TRACKING = config.get("tracking", {})
HUB = hub_settings(config)
HUB_MODELS = hub_models(config, workflow.basedir)
for source in (s for s in weight_sources(config, workflow.basedir) if s.kind != "toy"):
    print(f"vhack: weights {source.describe(HUB['cache_dir'])}", file=sys.stderr)
REPORT_QUESTIONS = config.get("report_questions") or sorted(QUESTIONS)   # the default target's questions
THREADS = config.get("threads_per_job", 1)
TOY_MODELS = config.get("toy_models", {})


wildcard_constraints:
    problem_set="|".join(config["problem_sets"]),
    toy_model="|".join(TOY_MODELS) or "NONE",
    hub_model="|".join(HUB_MODELS) or "NONE",
    teacher="|".join(config["teachers"]),
    basis="|".join(config["bases"]),
    question="(?!runs$)[^/]+",   # an undeclared one fails in declared_question, naming the declared ones
    run="[A-Za-z0-9._+-]+",


def run_output(path):
    """A training output; write-protected once written when `protect_runs` is on (GPU presets)."""
    return protected(path) if config.get("protect_runs", False) else path


def tracking_outputs(run_dir):
    """The live tracker files a train job writes (TensorBoard events unless tracking.tensorboard is off)."""
    return {"tensorboard": directory(f"{run_dir}/tensorboard")} if TRACKING.get("tensorboard", True) else {}


def problems_path(name):
    return f"data/problems/{name}.parquet"


def fetched_manifest(name):
    return f"{HUB['cache_dir']}/fetched/{name}.json"


def model_files(name):
    """Files a model depends on: a toy model's weights, the fetch manifest of a hub model, else nothing."""
    spec = config["models"][name]
    if spec.get("toy"):
        return [f"{spec['path']}/model.safetensors"]
    return [fetched_manifest(name)] if name in HUB_MODELS else []


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
    s = declared_run(wildcards.run).settings
    inputs = {"problems": problems_path(s["problem_set"]), "student": model_files(s["student"])}
    if specs.uses_teacher(s):
        inputs["teacher_cache"] = f"data/teacher_cache/{s['teacher']}.parquet"
    if s.get("basis"):
        inputs["basis"] = basis_path(s["basis"])
    if specs.refreshes_basis(s):
        inputs["pairs"] = config["pair_sets"][config["bases"][s["basis"]]["pairs"]]
    return inputs


def eval_inputs(wildcards):
    s = declared_run(wildcards.run).settings
    return {
        "problems": problems_path(s["problem_set"]),
        "student": model_files(s["student"]),
        "adapter": f"{run_dir(wildcards.run)}/adapter.safetensors",
    }


def train_params(wildcards):
    """What changes a run's training (vhack.specs): a change reruns exactly the affected runs."""
    return specs.train_params(config, declared_run(wildcards.run))


def eval_params(wildcards):
    """What changes a run's evaluation only (e.g. train.test_samples reruns evaluations, not training)."""
    return specs.eval_params(config, declared_run(wildcards.run))


def declared(target):
    """Stop at an undeclared target (a table, a run), naming the declared ones and the closest."""
    try:
        check_targets([target], RUNS, QUESTIONS)
    except ConfigError as err:
        sys.exit(f"vhack: {err}")


def declared_question(name):
    declared(f"results/{name}_table.md")
    return QUESTIONS[name]


def declared_run(name):
    declared(f"results/runs/{name}")
    return RUNS[name]


def question_runs(question):
    return sorted({r for row in declared_question(question).rows for r in row.runs})


def report_runs():
    return sorted({r for q in REPORT_QUESTIONS for r in question_runs(q)})


def run_outputs(runs):
    """A finished run: its evaluation (which needs the run's adapter, hence the whole run) and run.json."""
    return {
        "run_json": [f"{run_dir(r)}/run.json" for r in runs],
        "evals": [f"{run_dir(r)}/eval.parquet" for r in runs],
    }


def run_samples(runs):
    """The completions of finished runs: training rows and held-out samples."""
    return {
        "samples": [f"{run_dir(r)}/samples.parquet" for r in runs],
        "eval_samples": [f"{run_dir(r)}/eval_samples.parquet" for r in runs],
    }
