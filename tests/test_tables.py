"""tables: the seed document's Q1-Q8 tables regenerate from synthetic runs with the same numbers."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from fixtures.synthetic_runs import START, load_fixture, write_run, write_seed_runs
from vhack.aggregate import aggregate_runs
from vhack.experiments import expand_questions
from vhack.tables import question_table, runs_table

SEED_QUESTIONS = ["q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8"]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs, questions, targets = write_seed_runs(root)
    # a smoke run of an unfinished Q1 seed with absurd numbers: in runs.parquet, never in a table
    runs, _ = expand_questions(load_fixture())
    dirs.append(write_run(root, runs["vanilla__mix0.125__s43"], 0.99, 0.01, steps=3, tags=("smoke",)))
    _, runs_df = aggregate_runs(dirs)
    return runs_df, questions, targets


def _line(table, label: str) -> str:
    return next(line for line in table.table.splitlines() if line.startswith(f"| {label} |"))


@pytest.mark.parametrize("qid", SEED_QUESTIONS)
def test_table_reproduces_seed_numbers(seed, qid):
    runs_df, questions, targets = seed
    table = question_table(runs_df, questions[qid])
    frame = table.frame.set_index("label")
    assert list(frame.index) == [r.label for r in questions[qid].rows]
    for label, (hack, solve, seeds) in targets[qid].items():
        assert f"{frame.at[label, 'hack_s']:.3f}" == f"{hack:.3f}"
        assert f"{frame.at[label, 'gt_s']:.3f}" == f"{solve:.3f}"
        assert frame.at[label, "n"] == len(seeds) and frame.at[label, "seeds"] == tuple(seeds)
        line = _line(table, label)
        assert f"{hack:.3f}" in line and f"{solve:.3f}" in line
        assert f"| {len(seeds)}{'†' if len(seeds) == 1 else ''} |" in line


def test_q2_deltas_in_pp_paired_and_unconfounded(seed):
    runs_df, questions, _ = seed
    table = question_table(runs_df, questions["q2"])
    assert "| -13.1 |" in _line(table, "projected frozen-V") and "| -5.0 |" in _line(table, "projected frozen-V")
    assert "| -18.2 |" in _line(table, "projected refresh-2") and "| -8.1 |" in _line(table, "projected refresh-2")
    assert set(table.frame["test"]) == {"", "paired"}
    assert table.by_design == ("projection", "refresh_every") and table.confounds == ()
    assert "Confounds: none found." in table.markdown


def test_arm_defined_settings_are_by_design_without_vary(seed):
    runs_df, questions, _ = seed
    q2 = dataclasses.replace(questions["q2"], vary=("refresh_every",))
    table = question_table(runs_df, q2)
    assert "projection" in table.by_design and table.confounds == ()


def test_q6_matches_rows_by_mix_and_flags_the_basis_confound(seed):
    runs_df, questions, _ = seed
    table = question_table(runs_df, questions["q6"])
    frame = table.frame.set_index("label")
    assert frame.at["projected mix=0.25", "reference"] == "vanilla mix=0.25"
    assert not isinstance(frame.at["vanilla mix=0.25", "reference"], str)
    for label, delta in [("projected mix=0.5", -13.1), ("projected mix=0.25", -12.2), ("projected mix=0.125", -9.7)]:
        assert 100 * frame.at[label, "d_hack_s"] == pytest.approx(delta, abs=0.05)
        assert f"| {delta:+.1f} |" in _line(table, label)
    assert [c for c in table.confounds if c.startswith("basis (")]
    assert "Confounds: basis (21pairs: vanilla mix=0.5, projected mix=0.5; full:" in table.markdown
    assert set(table.by_design) == {"mix", "projection"}


def test_q8_flags_differing_seed_sets_and_uses_welch(seed):
    runs_df, questions, _ = seed
    table = question_table(runs_df, questions["q8"])
    row = table.frame.set_index("label").loc["v_hack_21pairs (21 pairs)"]
    assert row["test"] == "welch" and not math.isnan(row["p_hack_s"])
    assert any(c.startswith("seed sets differ") and "{41, 42, 43}" in c for c in table.confounds)


def test_single_seed_cells_are_marked_and_untested(seed):
    runs_df, questions, _ = seed
    table = question_table(runs_df, questions["q3"])
    line = _line(table, "no_gate")
    assert "0.625†" in line and "| 1† |" in line and "-7.5†" in line
    assert math.isnan(table.frame.set_index("label").at["no_gate", "p_hack_s"])
    assert "suggestive only" in table.legend


@pytest.mark.parametrize("qid", SEED_QUESTIONS)
def test_ci_and_p_only_with_two_seeds_on_both_sides(seed, qid):
    runs_df, questions, _ = seed
    for r in question_table(runs_df, questions[qid]).frame.to_dict("records"):
        tested = isinstance(r["reference"], str) and r["n"] >= 2 and r["ref_n"] >= 2
        for m in ("hack_s", "gt_s"):
            assert tested != math.isnan(r[f"p_{m}"]), (qid, r["label"])
            assert tested != math.isnan(r[f"d_{m}_lo"]), (qid, r["label"])
            if tested:
                assert r[f"d_{m}_lo"] <= r[f"d_{m}"] <= r[f"d_{m}_hi"]


def test_missing_rows_are_reported_not_fatal(seed):
    runs_df, questions, _ = seed
    table = question_table(runs_df, questions["q9_overshoot"])
    assert "overshoot 1.1: no finished runs yet" in table.markdown
    assert table.frame.set_index("label").at["overshoot 1.1", "n"] == 0
    assert "| overshoot 1.1 | — |" in table.table
    empty = question_table(runs_df.iloc[:0], questions["q2"])
    assert empty.frame["n"].sum() == 0 and "vanilla: no finished runs yet" in empty.markdown


def test_unfinished_seeds_listed_and_smoke_runs_excluded(seed):
    runs_df, questions, _ = seed
    assert "smoke" in set(runs_df["tags"])  # present in runs.parquet
    table = question_table(runs_df, questions["q1"])
    assert table.frame.set_index("label").at["vanilla mix=0.125", "n"] == 2
    assert "vanilla mix=0.125: seeds 43, 44 not finished" in table.markdown
    with_smoke = question_table(runs_df, questions["q1"], exclude_tags=())
    assert with_smoke.frame.set_index("label").at["vanilla mix=0.125", "n"] == 3


def test_settings_drifting_between_seeds_is_a_confound(seed):
    runs_df, questions, _ = seed
    drifted = runs_df.copy()
    drifted.loc[drifted["run"] == "projected__s42", "lr"] = 0.01
    table = question_table(drifted, questions["q2"])
    assert any(c.startswith("lr differs between the seeds of 'projected frozen-V'") for c in table.confounds)


def test_extra_question_metrics_get_their_own_columns(seed):
    runs_df, questions, _ = seed
    q = dataclasses.replace(questions["q2"], metrics=("hack_s_exit_code", "eval_hack"))
    table = question_table(runs_df, q)
    assert table.metrics == ("hack_s", "gt_s", "hack_s_exit_code", "eval_hack")
    assert "hack[exit_code]" in table.table.splitlines()[0] and "eval hack" in table.table.splitlines()[0]
    assert not math.isnan(table.frame.set_index("label").at["projected frozen-V", "p_eval_hack"])


def test_runs_table_groups_by_configuration_in_time_order(seed):
    runs_df, _, _ = seed
    text = runs_table(runs_df)
    assert text.startswith(f"{len(runs_df)} runs in 17 configurations.")
    for run, invocation in zip(runs_df["run"], runs_df["invocation"]):
        assert f"| {run} |" in text and invocation.split(" '")[0] in text
    group = text.split("### vanilla · basis=21pairs · drop_bottom_frac=0.25 · gate=one_sided · mix=0.5")[1]
    group = group.split("###")[0]
    assert [line.split(" | ")[1] for line in group.splitlines() if line.startswith("| vanilla")] == \
        ["41", "42", "43", "44"]
    assert "smoke" in text  # every run, smoke included


def test_runs_table_orders_groups_by_first_start(tmp_path):
    runs, _ = expand_questions(load_fixture())
    late, early = runs["vanilla__s41"], runs["projected__s41"]
    dirs = [write_run(tmp_path, late, 0.7, 0.3, started_at=START + pd.Timedelta(hours=2)),
            write_run(tmp_path, early, 0.5, 0.3, started_at=START)]
    _, frame = aggregate_runs(dirs)
    text = runs_table(frame)
    assert text.index("### projected · projection=erase") < text.index("### vanilla · projection=none")


@pytest.mark.parametrize("group_size, flagged", [(4, {"vanilla mix=0.125": "vanilla mix=0.25"}), (8, {})])
def test_rows_of_the_same_effective_training_are_flagged(tmp_path, group_size, flagged):
    from vhack.report import answer
    config = load_fixture()
    config["train"]["group_size"] = group_size   # G=4: mix 0.25 and 0.125 both give G_t = 1 teacher row
    runs, questions = expand_questions(config)
    q1 = questions["q1"]
    dirs = [write_run(tmp_path, runs[name], 0.6 + 0.01 * i, 0.3) for i, row in enumerate(q1.rows)
            for name in row.runs[:2]]
    table = question_table(aggregate_runs(dirs)[1], q1)
    assert table.same_training == flagged
    assert table.frame["same_as"].fillna("").tolist() == ["", "", flagged.get("vanilla mix=0.125", "")]
    text = answer(table)
    if flagged:
        assert "| vanilla mix=0.125 ≡ vanilla mix=0.25 |" in table.table
        assert ("Same training (≡): 'vanilla mix=0.125' resolves to the same settings as 'vanilla mix=0.25' "
                "(mix 0.125 vs 0.25; both G_t = 1 teacher rows per group): one finding, not two.") in table.notes
        assert "vanilla mix=0.125 vs" not in text and "vanilla mix=0.125 is the same training" in text
    else:
        assert "≡" not in table.markdown and "vanilla mix=0.125 vs vanilla mix=0.5" in text
