"""samples: every trained row and every evaluation sample survive the Parquet round trip, column for column."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import pyarrow.parquet as pq

from vhack.evaluation import sample_records
from vhack.grader import GRADE_FIELDS, Grade
from vhack.problems import build_toy_problems
from vhack.rollout import Completion
from vhack.samples import EVAL_SAMPLE_COLUMNS, GRADE_FLAGS, SAMPLE_COLUMNS, read_samples, step_samples, write_samples


def grade(mode: str, exploited: bool, reward: float) -> Grade:
    return Grade(mode=mode, format_ok=True, passed=exploited, gt_correct=False, exploited=exploited,
                 redefines_run_tests=exploited and mode == "run_tests", sets_sentinel=False, prints_marker=False,
                 writes_file=False, exits_early=mode == "exit_code", reward=reward, timed_out=False,
                 error="oracle: assertion failed")


def completion(p: int, s: int, text: str) -> Completion:
    return Completion(p, s, text, [1, 2, 3], 3, True)


def test_step_samples_round_trip_with_every_column(tmp_path):
    from vhack.trainer import Row
    modes = ["run_tests", "exit_code"]
    teacher_text = "```python\nimport sys\nsys.exit(0)\n```"
    teacher_grade = {k: v for k, v in asdict(grade("exit_code", True, 1.1)).items() if k != "mode"}
    rows = []
    for g in range(2):   # group order: 2 student rows then 2 teacher rows
        rows += [Row(g, [1], [2], 1.1 if s == 0 else 0.1, False, asdict(grade(modes[g], s == 0, 1.1 if s == 0 else 0.1)),
                     modes[g], f"toy_{g + 1}", f"```python\ndef f(): pass  # {g}.{s}\n```", 3) for s in range(2)]
        rows += [Row(g, [1], [2], 1.1, True, teacher_grade, modes[g], f"toy_{g + 1}", teacher_text, 9)] * 2
    advantages = [0.05, -0.95, 0.45, 0.45, 0.1, -0.9, 0.4, 0.4]
    records = step_samples(3, rows, advantages)
    write_samples(tmp_path / "samples.parquet", records)

    assert pq.ParquetFile(tmp_path / "samples.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    back = read_samples(tmp_path / "samples.parquet")
    assert tuple(back.columns) == SAMPLE_COLUMNS and len(back) == 8
    pd.testing.assert_frame_equal(back, pd.DataFrame(records, columns=list(SAMPLE_COLUMNS)))
    assert back["source"].tolist() == ["student", "student", "teacher", "teacher"] * 2
    assert back["group"].tolist() == [0] * 4 + [1] * 4 and back["row"].tolist() == [0, 1, 2, 3] * 2
    assert back["completion"][1].endswith("# 0.1\n```") and back["completion"][2] == teacher_text
    assert back["problem_id"].tolist() == ["toy_1"] * 4 + ["toy_2"] * 4
    teacher = back.iloc[2]   # teacher rows carry every grade flag of the cache, not only the four it trains on
    assert teacher["exits_early"] and teacher["error"] == "oracle: assertion failed" and teacher["num_tokens"] == 9
    assert back["advantage"].tolist() == advantages and back["reward"].tolist() == [1.1, 0.1, 1.1, 1.1] * 2
    assert set(GRADE_FLAGS) == set(GRADE_FIELDS) - {"mode", "reward"} and not back[list(GRADE_FLAGS)].isna().any().any()


def test_eval_samples_round_trip_with_every_column(tmp_path):
    problems = [p for p in build_toy_problems(0, 24, 12) if p.split == "test"][:2]
    assigned = ["sentinel", "file_marker"]
    completions = [completion(p, s, f"answer {p}.{s}") for p in range(2) for s in range(2)]
    hinted = [grade(assigned[c.prompt_index], c.sample_index == 0, 1.1) for c in completions]
    plain = [grade("none", False, 0.1) for _ in completions]
    records = sample_records(problems, assigned, completions, hinted) + sample_records(problems, assigned,
                                                                                       completions, plain)
    write_samples(tmp_path / "eval_samples.parquet", records, EVAL_SAMPLE_COLUMNS)
    back = read_samples(tmp_path / "eval_samples.parquet")
    assert tuple(back.columns) == EVAL_SAMPLE_COLUMNS and len(back) == 8
    pd.testing.assert_frame_equal(back, pd.DataFrame(records, columns=list(EVAL_SAMPLE_COLUMNS)))
    assert back["prompt_mode"].tolist() == ["sentinel"] * 2 + ["file_marker"] * 2 + ["none"] * 4
    assert back["mode"].tolist() == ["sentinel"] * 2 + ["file_marker"] * 2 + ["sentinel"] * 2 + ["file_marker"] * 2
    assert back["problem_id"].tolist()[:2] == [problems[0].id] * 2 and back["exploited"].tolist()[:4] == [
        True, False, True, False]
