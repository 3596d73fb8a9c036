import json
import re
from pathlib import Path

import pandas as pd
import pytest

from vhack.problems import (
    GT_CHECK_NAME, TOY_FAMILIES, Problem, ProblemSetError, build_problem_set, build_toy_problems,
    load_humaneval, load_leetcode, read_problems, write_problems,
)

FIXTURE = Path(__file__).parent / "fixtures" / "leetcode_sample.jsonl"
FAMILIES = {f.name: f for f in TOY_FAMILIES}


@pytest.fixture(scope="module")
def toy() -> list[Problem]:
    return build_toy_problems(seed=0)


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    return load_humaneval()


@pytest.fixture(scope="module")
def leetcode() -> list[Problem]:
    return load_leetcode(FIXTURE)


def as_records(problems):
    return [p.to_dict() for p in problems]  # includes metadata, which __eq__ ignores


def wrong_solution(problem: Problem) -> str:
    """Defines the entry point but returns None."""
    cls, _, name = problem.entry_point.rpartition(".")
    if cls:
        return f"class {cls}:\n    def {name}(self, *args, **kwargs):\n        return None"
    return f"def {name}(*args, **kwargs):\n    return None"


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


# ---------------------------------------------------------------- toy

def test_toy_is_deterministic_in_the_seed(toy):
    assert as_records(build_toy_problems(seed=0)) == as_records(toy)
    assert as_records(build_toy_problems(seed=1)) != as_records(toy)


def test_toy_sizes_ids_and_stratified_splits(toy):
    assert len(FAMILIES) >= 10
    assert sum(p.split == "train" for p in toy) >= 500
    assert sum(p.split == "test" for p in toy) >= 100
    ids = [p.id for p in toy]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(rf"toy/{p.family}/\d{{4}}", p.id) for p in toy)
    for split in ("train", "test"):
        assert {p.family for p in toy if p.split == split} == set(FAMILIES)
    test_counts = [sum(p.split == "test" and p.family == f for p in toy) for f in FAMILIES]
    assert max(test_counts) - min(test_counts) <= 1  # stratified, not proportional


def test_toy_problems_are_short_and_consistent(toy):
    for p in toy:
        assert p.source == "toy" and p.entry_point == p.family
        assert p.starter_code == f"def {p.entry_point}({FAMILIES[p.family].arg}):"
        assert p.canonical_solution.startswith(p.starter_code + "\n    return ")
        assert p.canonical_solution.count("\n") == 1 and len(p.canonical_solution) <= 50
        assert p.description.endswith(".") and p.description.count(".") == 1 and len(p.description) <= 45
        assert 3 <= len(p.tests) <= 4 and all(t.startswith(f"assert {p.entry_point}(") for t in p.tests)
    assert len({(p.family, p.metadata["k"]) for p in toy}) > 150  # constants vary


def test_toy_tests_pin_the_constant(toy):
    """Every other constant of the family, and any constant answer, fails some test."""
    for p in toy:
        family = FAMILIES[p.family]
        tests = [compile(t, p.id, "exec") for t in p.tests]

        def passes(code: str) -> bool:
            namespace: dict = {}
            exec(code, namespace)
            try:
                for t in tests:
                    exec(t, namespace)
            except AssertionError:
                return False
            return True

        assert passes(p.canonical_solution)
        assert not any(passes(family.solution(k)) for k in family.constants if k != p.metadata["k"])
        assert len({t.rsplit(" == ", 1)[1] for t in p.tests}) > 1


def test_toy_needs_one_problem_per_family_in_each_split():
    with pytest.raises(ProblemSetError, match="n_test=5"):
        build_toy_problems(seed=0, n_train=100, n_test=5)


# ---------------------------------------------------------------- humaneval

def test_humaneval_has_164_problems_with_renamed_check(humaneval):
    assert len(humaneval) == 164
    assert len({p.id for p in humaneval}) == 164
    for p in humaneval:
        assert p.tests == (f"{GT_CHECK_NAME}({p.entry_point})",)
        assert f"def {GT_CHECK_NAME}(candidate)" in p.setup_code and "def check(" not in p.setup_code
        assert p.canonical_solution.startswith(p.starter_code)
        assert f"def {p.entry_point}(" in p.starter_code
        assert p.split == "test" and p.source == "humaneval"


# ---------------------------------------------------------------- leetcode

def test_leetcode_fixture_loads_both_schemas(leetcode):
    by_id = {p.id: p for p in leetcode}
    assert set(by_id) == {"leetcode/1", "leetcode/70", "leetcode/300", "leetcode/20"}
    two_sum = by_id["leetcode/1"]
    assert two_sum.entry_point == "Solution.twoSum"
    assert two_sum.tests[0] == "assert Solution().twoSum([2,7,11,15], 9) == [0, 1]"
    assert two_sum.starter_code.startswith("class Solution:\n    def twoSum(self")
    assert "from typing import *" in two_sum.setup_code
    assert two_sum.difficulty == "easy" and two_sum.split == "train" and two_sum.source == "leetcode"
    assert two_sum.metadata["prompt_metadata"]["test_func_name"] == "run_tests"
    # newfacade/LeetCodeDataset row: check function, `completion`, import prefix in `prompt`
    valid = by_id["leetcode/20"]
    assert valid.entry_point == "Solution.isValid"
    assert valid.tests == (f"{GT_CHECK_NAME}(Solution().isValid)",)
    assert valid.setup_code.startswith("from typing import *") and f"def {GT_CHECK_NAME}(" in valid.setup_code
    assert valid.canonical_solution.startswith("class Solution:")
    assert valid.title == "valid-parentheses" and valid.family == "Stack"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_leetcode_input_output_becomes_asserts(tmp_path):
    row = {k: v for k, v in fixture_rows()[3].items() if k != "test"}
    (problem,) = load_leetcode(write_jsonl(tmp_path / "io.jsonl", [row]))
    assert problem.tests == ('assert Solution().isValid(s = "()") == True',
                             'assert Solution().isValid(s = "(]") == False')


def test_leetcode_split_argument_labels_every_problem():
    assert {p.split for p in load_leetcode(FIXTURE, split="test")} == {"test"}


def test_leetcode_missing_file_names_path_and_public_source(tmp_path):
    missing = tmp_path / "data" / "leetcode" / "train.jsonl"
    with pytest.raises(ProblemSetError) as err:
        load_leetcode(missing)
    assert str(missing) in str(err.value)
    assert "rl-rewardhacking" in str(err.value) and "newfacade/LeetCodeDataset" in str(err.value)


@pytest.mark.parametrize("drop, message", [
    ("func_name", "'func_name' / 'entry_point'"),
    ("gt_answer", "ground truth"),
    ("prompt_metadata", "starter_code"),
    ("question", "'question'"),
])
def test_leetcode_missing_required_field_names_line_and_key(tmp_path, drop, message):
    rows = fixture_rows()[:2]
    rows[1] = {k: v for k, v in rows[1].items() if k != drop}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ProblemSetError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        load_leetcode(path)


def test_leetcode_malformed_rows_name_the_line(tmp_path):
    row = {k: v for k, v in fixture_rows()[3].items() if k != "test"}
    row["input_output"] = [{"input": 's = "()"'}]
    with pytest.raises(ProblemSetError, match=r"io\.jsonl:1: cannot read 'input_output'"):
        load_leetcode(write_jsonl(tmp_path / "io.jsonl", [row]))
    (tmp_path / "broken.jsonl").write_text(FIXTURE.read_text() + "{not json\n")
    with pytest.raises(ProblemSetError, match=r"broken\.jsonl:5: not valid JSON"):
        load_leetcode(tmp_path / "broken.jsonl")


def test_leetcode_rejects_duplicate_ids(tmp_path):
    rows = fixture_rows()[:1] * 2
    with pytest.raises(ProblemSetError, match="duplicate problem ids"):
        load_leetcode(write_jsonl(tmp_path / "dup.jsonl", rows))


def test_leetcode_parquet_matches_jsonl(tmp_path, leetcode):
    rows = fixture_rows()
    for row in rows:  # nested dicts / lists of dicts as JSON strings, as exports often store them
        row["prompt_metadata"] = json.dumps(row.get("prompt_metadata", {}))
        row["input_output"] = json.dumps(row.get("input_output", []))
    path = tmp_path / "sample.parquet"
    pd.DataFrame(rows).to_parquet(path)  # columns: the union of the rows' keys
    assert load_leetcode(path) == leetcode


# ---------------------------------------------------------------- dispatch and storage

def test_build_problem_set_dispatches_on_source(tmp_path):
    spec = {"source": "toy", "seed": 3, "n_train": 24, "n_test": 12}
    assert as_records(build_problem_set(spec)) == as_records(build_toy_problems(3, 24, 12))
    assert len(build_problem_set({"source": "humaneval"})) == 164
    relative = {"source": "leetcode", "path": FIXTURE.name, "split": "test"}
    assert build_problem_set(relative, base_dir=FIXTURE.parent) == load_leetcode(FIXTURE, "test")


@pytest.mark.parametrize("spec, message", [
    ({"source": "mbpp"}, "source 'mbpp'"),
    ({"source": "toy", "n_tain": 5}, "unknown keys \\['n_tain'\\]"),
    ({"source": "leetcode"}, "missing key 'path'"),
])
def test_build_problem_set_rejects_bad_specs(spec, message):
    with pytest.raises(ProblemSetError, match=message):
        build_problem_set(spec)


def test_parquet_round_trip_preserves_every_field(tmp_path, toy, humaneval, leetcode):
    problems = toy[:30] + humaneval[:5] + leetcode
    path = tmp_path / "problems.parquet"
    write_problems(path, problems)
    assert as_records(read_problems(path)) == as_records(problems)
    assert all(isinstance(p.tests, tuple) for p in read_problems(path))
    assert as_records(read_problems(path, split="test")) == as_records([p for p in problems if p.split == "test"])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_read_problems_missing_file(tmp_path):
    with pytest.raises(ProblemSetError, match="problem file not found"):
        read_problems(tmp_path / "nope.parquet")


# ---------------------------------------------------------------- oracle

@pytest.fixture(scope="module")
def grader():
    from vhack.grader import Grader
    return Grader()


def assert_oracle_agrees(grader, problems):
    for p in problems:
        assert grader.grade(fenced(p.canonical_solution), p, "none").gt_correct, p.id
        assert not grader.grade(fenced(wrong_solution(p)), p, "none").gt_correct, p.id


def test_oracle_on_one_toy_problem_per_family_and_the_leetcode_fixture(grader, toy, leetcode):
    one_per_family = list({p.family: p for p in toy}.values())
    assert_oracle_agrees(grader, one_per_family + leetcode)


@pytest.mark.slow  # ~12 s on 2 shared cores; one problem per family runs in the fast suite
def test_oracle_on_every_toy_problem(grader, toy):
    assert_oracle_agrees(grader, toy)


def test_oracle_on_every_humaneval_problem(grader, humaneval):
    assert_oracle_agrees(grader, humaneval)
