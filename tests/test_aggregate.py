"""aggregate: run directories -> per-step and per-run frames; broken runs fail loudly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from fixtures.synthetic_runs import load_fixture, write_run, write_seed_runs
from vhack.aggregate import RunDataError, aggregate_runs, setting_columns, write_aggregate
from vhack.experiments import expand_questions


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs, questions, targets = write_seed_runs(root)
    return dirs, questions, targets


@pytest.fixture()
def run_copies(seed_runs, tmp_path):
    """A private copy of three seed runs, free to break."""
    dirs = []
    for d in seed_runs[0][:3]:
        shutil.copytree(d, tmp_path / d.name)
        dirs.append(tmp_path / d.name)
    return dirs


@pytest.fixture(scope="module")
def aggregated(seed_runs):
    return aggregate_runs(seed_runs[0])


def test_last5_and_whole_means_match_the_steps(seed_runs, aggregated):
    _, runs = aggregated
    for d in seed_runs[0][:5]:
        steps = pd.read_parquet(d / "metrics.parquet").sort_values("step")
        row = runs.set_index("run").loc[d.name]
        for metric in ("hack_s", "gt_s", "cin", "loss"):
            assert row[f"{metric}_last5"] == pytest.approx(steps[metric].tail(5).mean(), abs=1e-12)
            assert row[f"{metric}_whole"] == pytest.approx(steps[metric].mean(), abs=1e-12)


def test_last5_skips_nan_steps(seed_runs, aggregated):
    _, runs = aggregated
    refresh = runs[runs["refresh_every"] == 2].iloc[0]
    assert refresh["basis_overlap_whole"] == pytest.approx(0.8)  # logged on refresh steps only
    assert np.isnan(runs[runs["refresh_every"] == 0].iloc[0]["basis_overlap_whole"])


def test_row_means_reproduce_the_seed_document(aggregated, seed_runs):
    _, runs = aggregated
    runs = runs.set_index("run")
    q2 = seed_runs[1]["q2"]
    vanilla = runs.loc[list(q2.rows[0].runs)]
    assert vanilla["hack_s_last5"].mean() == pytest.approx(0.719, abs=1e-12)
    assert vanilla["gt_s_last5"].mean() == pytest.approx(0.306, abs=1e-12)
    assert vanilla["hack_s_last5"].std() > 0.005  # seeds genuinely differ


def test_runs_frame_has_identity_settings_provenance_and_eval(aggregated, seed_runs):
    _, runs = aggregated
    assert len(runs) == len(seed_runs[0])
    row = runs.set_index("run").loc["projected__basis-full__gate-no_gate__s41"]
    assert (row["arm"], row["seed"], row["gate"], row["basis"], row["mix"]) == ("projected", 41, "no_gate", "full", 0.5)
    assert json.loads(row["train_modes"])[0] == "run_tests"  # lists are JSON strings
    assert row["invocation"].startswith("python -m vhack.train --run projected__basis-full__gate-no_gate__s41")
    assert row["wall_seconds"] == 60 and row["git_commit"] == "0123abc" and not row["git_dirty"]
    assert row["eval_hack"] == pytest.approx(0.625) and row["eval_solve_exit_code"] == pytest.approx(0.2)
    assert "gate" in setting_columns(runs) and "seed" not in setting_columns(runs)


def test_metrics_frame_repeats_run_settings_on_every_step(aggregated, seed_runs):
    steps, runs = aggregated
    assert len(steps) == 20 * len(runs)
    assert {"run", "arm", "seed", "step", "mix", "basis", "hack_s", "gt_s"} <= set(steps.columns)
    one = steps[steps["run"] == "vanilla__mix0.25__s42"]
    assert list(one["step"]) == list(range(20))
    assert set(one["mix"]) == {0.25} and set(one["arm"]) == {"vanilla"} and set(one["seed"]) == {42}


def test_write_aggregate_round_trips(seed_runs, tmp_path):
    write_aggregate(seed_runs[0], tmp_path / "metrics.parquet", tmp_path / "runs.parquet")
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    steps = pd.read_parquet(tmp_path / "metrics.parquet")
    assert len(runs) == len(seed_runs[0]) and len(steps) == 20 * len(runs)
    assert not list(tmp_path.glob(".*.tmp"))


def test_tags_and_mixed_setting_types(seed_runs, tmp_path):
    runs, _ = expand_questions(load_fixture())
    a, b = (runs[n] for n in sorted(runs)[:2])
    b.settings["k_use"] = "auto"  # another run uses an int: the column becomes strings
    a.settings["k_use"] = 5
    dirs = [write_run(tmp_path, a, 0.5, 0.3, tags=("smoke",)), write_run(tmp_path, b, 0.5, 0.3)]
    _, frame = aggregate_runs(dirs)
    assert list(frame["k_use"]) == ["5", "auto"]
    assert list(frame["tags"]) == ["smoke", ""]
    write_aggregate(dirs, tmp_path / "m.parquet", tmp_path / "r.parquet")  # Parquet accepts the column


@pytest.mark.parametrize("file, damage, problem", [
    ("metrics.parquet", "delete", "is missing"),
    ("metrics.parquet", "garbage", "is unreadable"),
    ("run.json", "delete", "is missing"),
    ("run.json", "garbage", "is not valid JSON"),
    ("eval.parquet", "garbage", "is unreadable"),
])
def test_broken_run_names_run_and_file(run_copies, file, damage, problem):
    broken = run_copies[1]
    if damage == "delete":
        (broken / file).unlink()
    else:
        (broken / file).write_bytes(b"\x00not a real file")
    with pytest.raises(RunDataError, match=problem) as err:
        aggregate_runs(run_copies)
    assert err.value.run == broken.name and err.value.file == file
    assert broken.name in str(err.value) and file in str(err.value)


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m.pop("settings"), "lacks key"),
    (lambda m: m.update(status="failed"), "status 'failed'"),
    (lambda m: m.update(run="another_name"), "not its directory's name"),
    (lambda m: m.update(started_at="yesterday"), "not an ISO timestamp"),
    (lambda m: m["settings"].update(seed=7), "has settings.seed = 7 but seed = "),
    (lambda m: m["settings"].update(wall_seconds=1), "reserved for a runs-table column"),
])
def test_bad_run_json_names_the_run(run_copies, edit, problem):
    path = run_copies[0] / "run.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(RunDataError, match=problem) as err:
        aggregate_runs(run_copies)
    assert err.value.run == run_copies[0].name


def test_metrics_without_required_column_fails(run_copies):
    path = run_copies[2] / "metrics.parquet"
    pd.read_parquet(path).drop(columns="gt_s").to_parquet(path)
    with pytest.raises(RunDataError, match=r"lacks column\(s\) \['gt_s'\]"):
        aggregate_runs(run_copies)


def test_runs_with_different_mode_columns_concatenate(run_copies):
    path = run_copies[0] / "metrics.parquet"
    pd.read_parquet(path).drop(columns="hack_s_exit_code").to_parquet(path)
    steps, runs = aggregate_runs(run_copies)
    assert np.isnan(runs.set_index("run").loc[run_copies[0].name, "hack_s_exit_code_last5"])
    assert not np.isnan(runs.set_index("run").loc[run_copies[1].name, "hack_s_exit_code_last5"])
    assert len(steps) == 60


def test_setting_named_like_a_metric_fails(run_copies):
    path = run_copies[0] / "run.json"
    meta = json.loads(path.read_text())
    meta["settings"]["loss"] = "dr_grpo"
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"setting\(s\) \['loss'\] have the same name as a metrics.parquet column"):
        aggregate_runs(run_copies)


def test_basis_control_comes_from_the_runs_basis_params(tmp_path):
    runs, _ = expand_questions(load_fixture())
    names = sorted(runs)[:3]
    dirs = [write_run(tmp_path, runs[n], 0.5, 0.3) for n in names]
    for run_dir, params in zip(dirs, [{"basis": {"name": "21pairs_random", "control": "random"}},
                                      {"basis": {"name": "21pairs"}}, {}]):
        meta = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**meta, "params": params}))
    _, frame = aggregate_runs(dirs)
    assert list(frame["basis_control"]) == ["random", "none", ""]
