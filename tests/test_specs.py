"""Typed specs from config, and rule params that hold exactly what each job depends on."""

import dataclasses
from pathlib import Path

import pytest

from vhack.config import load_config
from vhack.experiments import expand_questions
from vhack.specs import (ComputeSpec, GraderSpec, LoopholeSpec, TrainingRun, basis_params, eval_params,
                         train_params, uses_teacher)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return load_config(REPO / "config/config.yaml", base_dir=REPO)


@pytest.fixture(scope="module")
def runs(config):
    return expand_questions(config)[0]


def test_training_params_leave_out_evaluation_settings_and_compute_knobs(config, runs):
    params = train_params(config, runs["projected__s41"])
    assert "test_samples" not in params["settings"] and params["settings"]["steps"] == config["train"]["steps"]
    assert "workers" not in params["grader"] and params["grader"]["timeout_s"] == config["grader"]["timeout_s"]
    assert "compute" not in params and "basis" not in params    # a frozen basis arrives as its file


def test_evaluation_params_hold_only_what_evaluation_reads(config, runs):
    params = eval_params(config, runs["projected__s41"])
    assert params["settings"] == {k: config["train"][k] for k in ("test_samples", "max_new_tokens", "temperature")}
    assert set(params["grader"]) == {"timeout_s", "cpu_s", "memory_mb"}   # rewards and workers change no evaluation
    assert eval_params(config, runs["projected__s41"]) == eval_params(config, runs["projected__refresh_every2__s41"])


def test_a_refreshing_run_carries_its_basis_settings(config, runs):
    params = train_params(config, runs["projected__refresh_every2__s41"])
    assert params["basis"] == {"name": "21pairs", **config["bases"]["21pairs"]}
    run = TrainingRun.from_params(params)
    assert run.basis.k == config["bases"]["21pairs"]["k"] and run.settings.refresh_every == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 0


def test_teacher_use_is_decided_by_teacher_rows(config):
    base = dict(config["train"], group_size=4)
    assert not uses_teacher({**base, "mix": 0.1})      # round(0.4) = 0 teacher rows
    assert uses_teacher({**base, "mix": 0.125})        # 0.5 rounds up: one row
    assert not uses_teacher({**base, "mix": 0.5, "teacher": None})
    run = TrainingRun.from_params(train_params(config, expand_questions(config)[0]["vanilla__mix0.125__s41"]))
    assert run.teacher == "toy_teacher"


def test_defaults_live_with_their_types(config):
    assert LoopholeSpec.from_config({"modes": ["run_tests"]}).prompt_style == "full"
    assert GraderSpec.from_config({}) == GraderSpec()
    assert ComputeSpec.from_config(config) == ComputeSpec(micro_batch_size=config["compute"]["micro_batch_size"],
                                                          progress=config["compute"]["progress"],
                                                          grader_workers=config["grader"]["workers"])
    assert basis_params(config, "21pairs")["prompt_style"] == config["loopholes"]["prompt_style"]


def test_a_config_key_without_a_field_is_an_error_not_dropped():
    with pytest.raises(ValueError, match=r"GraderSpec has no field for config key\(s\) \['wall_s'\]"):
        GraderSpec.from_config({"timeout_s": 2.0, "wall_s": 2})


def test_every_spec_resolves_before_any_job(config, runs):
    from vhack.config import ConfigError
    from vhack.specs import check_specs
    check_specs(config, runs)
    bad = {**config, "bases": {**config["bases"], "x": {**config["bases"]["full"], "tokens": 4}}}
    with pytest.raises(ConfigError, match=r"BasisSpec has no field for config key\(s\) \['tokens'\]"):
        check_specs(bad, runs)
