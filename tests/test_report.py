"""report: results.md with every question, generated answers, and the per-question figures."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from fixtures.synthetic_runs import write_seed_runs
from vhack.aggregate import aggregate_runs, write_aggregate
from vhack.report import FIGURE_KINDS, answer, report_files, write_report
from vhack.tables import question_table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs, questions, _ = write_seed_runs(root)
    steps, runs = aggregate_runs(dirs)
    return steps, runs, questions


@pytest.fixture(scope="module")
def report(seed, tmp_path_factory):
    steps, runs, questions = seed
    out = tmp_path_factory.mktemp("reports")
    files = write_report(runs, steps, questions, out)
    return out, files, (out / "results.md").read_text()


def _section(text: str, qid: str) -> str:
    return re.split(r"\n## ", text.split(f"\n## {qid}. ")[1])[0]


def test_writes_results_and_three_pngs_per_question(report, seed):
    out, files, _ = report
    questions = seed[2]
    assert files == report_files(questions, out)
    assert files[0] == out / "results.md"
    assert {f.name for f in files[1:]} == {f"{q}_{k}.png" for q in questions for k in FIGURE_KINDS}
    for f in files[1:]:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000


def test_every_question_has_why_table_answer_and_figures(report, seed):
    _, _, text = report
    for qid, q in seed[2].items():
        section = _section(text, qid)
        assert section.startswith(q.title) and f"**Why:** {q.why}" in section
        assert "| row | hack | WH |" in section and "**Answer:**" in section
        for kind in FIGURE_KINDS:
            assert f"(figures/{qid}_{kind}.png)" in section


def test_answer_states_the_numbers(report):
    q2 = _section(report[2], "q2")
    assert "Largest hack reduction: projected refresh-2 (-18.2pp vs vanilla, with solve -8.1pp" in q2
    assert ("projected frozen-V vs vanilla: hack fell 13.1pp (0.719 → 0.588; 95% CI -20.1 to -6.1pp, "
            "paired t-test p = 0.009, significant at 0.05)") in q2
    assert "solve fell 5.0pp (0.306 → 0.256" in q2 and "(n = 4 vs 4 seeds)" in q2


def test_answer_marks_single_seeds_and_confounds(report):
    q3, q6 = _section(report[2], "q3"), _section(report[2], "q6")
    assert "reverse vs one_sided: hack fell 12.5pp (0.700 → 0.575); solve fell 13.3pp (0.283 → 0.150)" in q3
    assert "(n = 1 vs 3 seeds, suggestive only)" in q3 and "p =" not in q3.split("**Answer:**")[1]
    assert "Caveat: the comparison is confounded (basis; see Confounds)." in q6
    assert "projected mix=0.25 vs vanilla mix=0.25: hack fell 12.2pp (0.678 → 0.556" in q6


def test_answer_without_runs(seed):
    _, runs, questions = seed
    assert answer(question_table(runs.iloc[:0], questions["q2"])) == "No finished runs yet."


def test_report_with_no_finished_runs_still_writes_every_file(seed, tmp_path):
    steps, runs, questions = seed
    files = write_report(runs.iloc[:0], steps.iloc[:0], [questions["q9_overshoot"]], tmp_path)
    assert all(f.exists() for f in files) and len(files) == 4
    assert "No finished runs yet." in (tmp_path / "results.md").read_text()


def test_report_from_parquet_round_trip(tmp_path):
    dirs, questions, _ = write_seed_runs(tmp_path / "runs")
    write_aggregate(dirs, tmp_path / "metrics.parquet", tmp_path / "runs.parquet")
    runs, steps = pd.read_parquet(tmp_path / "runs.parquet"), pd.read_parquet(tmp_path / "metrics.parquet")
    write_report(runs, steps, [questions["q2"]], tmp_path / "reports")
    q2 = _section((tmp_path / "reports" / "results.md").read_text(), "q2")
    assert "hack fell 13.1pp (0.719 → 0.588" in q2
    assert "the latest finished at 2026-05-20" in (tmp_path / "reports" / "results.md").read_text()


def test_cin_null_comes_from_the_random_v_row_where_one_ran():
    from vhack.report import measured_cin_null
    runs = pd.DataFrame({"basis_control": ["none", "random", "random"], "null_cin": [0.03] * 3},
                        index=["real", "r1", "r2"])
    steps = pd.DataFrame({"run": ["real", "real", "r1", "r1", "r2", "r2"], "step": [0, 1] * 3,
                          "cin": [0.3, 0.2, 0.04, 0.06, 0.05, 0.05]})
    label, level = measured_cin_null(steps, runs, [("v_hack", ["real"]), ("random V", ["r1", "r2"])])
    assert label == "random V" and level == pytest.approx(0.05)
    assert measured_cin_null(steps, runs, [("v_hack", ["real"]), ("random V", [])]) is None   # not run: analytic


def test_report_says_what_each_control_rules_out(report):
    from vhack.report import CONTROL_MEANINGS
    text = report[2]
    assert set(CONTROL_MEANINGS) == {"random", "shuffled", "nonhack", "no_teacher"}
    for line in CONTROL_MEANINGS.values():
        assert f"- {line}\n" in text and "rules out" in line
