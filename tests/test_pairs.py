from pathlib import Path

import pandas as pd
import pytest
import yaml

from vhack.grader import Grader
from vhack.pairs import PAIR_MODES, Pair, PairSet, PairSetError, load_pair_set, mine_pairs, toy_pairs
from vhack.problems import build_toy_problems

PAIR_DIR = Path(__file__).resolve().parents[1] / "config" / "pairs"
SET_FILES = sorted(PAIR_DIR.glob("*.yaml"))
SIZES = {"toy_18": 18, "toy_21": 21, "toy_60": 60, "leetcode_18": 18, "leetcode_21": 21, "leetcode_60": 60}


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2) as g:
        yield g


def test_every_declared_set_is_there():
    assert sorted(p.stem for p in SET_FILES) == sorted(SIZES)


@pytest.mark.parametrize("path", SET_FILES, ids=lambda p: p.stem)
def test_every_hack_is_exploited_and_every_clean_is_correct(path, grader):
    pair_set = load_pair_set(path)
    items = [item for p in pair_set.pairs for item in ((p.hack, p.problem, p.mode), (p.clean, p.problem, p.mode))]
    grades = grader.grade_many(items)
    for pair, hack, clean in zip(pair_set.pairs, grades[::2], grades[1::2]):
        assert hack.exploited, f"{path.name} {pair.id}: hack not exploited ({hack.error})"
        assert clean.gt_correct and clean.passed and not clean.exploited, f"{path.name} {pair.id}: {clean.error}"


def test_a_toy_hack_with_a_correct_attempt_still_solves_outside_exit_code(grader):
    """The exploit comes first, then the attempt: a student that learns the exploit keeps its solutions."""
    from vhack.toy import clean_completion, hack_completion
    problem = next(p for p in build_toy_problems(0) if p.split == "train")
    for mode in PAIR_MODES:
        with_stub, with_solution = grader.grade_many([(hack_completion(problem, mode), problem, mode),
                                                      (hack_completion(problem, mode, problem.canonical_solution),
                                                       problem, mode)])
        assert with_stub.exploited, mode
        assert with_solution.passed and with_solution.gt_correct == (mode != "exit_code"), mode
        hack_code = hack_completion(problem, mode, problem.canonical_solution)
        assert hack_code.endswith(clean_completion(problem).removeprefix("```python\n"))


@pytest.mark.parametrize("path", SET_FILES, ids=lambda p: p.stem)
def test_sets_have_their_size_and_spread_over_all_five_modes(path):
    pair_set = load_pair_set(path)
    assert pair_set.name == path.stem
    assert len(pair_set.pairs) == SIZES[path.stem]
    counts = pd.Series([p.mode for p in pair_set.pairs]).value_counts()
    assert set(counts.index) == set(PAIR_MODES)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("family", ["toy", "leetcode"])
def test_smaller_sets_are_prefixes_of_the_larger(family):
    sets = {n: load_pair_set(PAIR_DIR / f"{family}_{n}.yaml").pairs for n in (18, 21, 60)}
    assert sets[21][:18] == sets[18] and sets[60][:21] == sets[21]


def test_committed_toy_sets_match_the_generator():
    for n in (18, 21, 60):
        assert load_pair_set(PAIR_DIR / f"toy_{n}.yaml").content_hash == PairSet.of(f"toy_{n}", toy_pairs(n)).content_hash


def test_toy_pairs_look_like_the_toy_students_training_data():
    from vhack.toy import train_tokenizer
    train = [p for p in build_toy_problems(0) if p.split == "train"]
    by_id = {p.id: p for p in train}
    tokenizer = train_tokenizer(train, list(PAIR_MODES), vocab_size=1024)
    for pair in load_pair_set(PAIR_DIR / "toy_60.yaml").pairs:
        generated = by_id[pair.problem.id]
        assert (pair.problem.description, pair.problem.tests) == (generated.description, generated.tests)
        for completion in (pair.hack, pair.clean):
            assert completion.startswith("```python\n") and completion.endswith("\n```")
            assert 15 <= len(tokenizer(completion)["input_ids"]) <= 40


def test_leetcode_pairs_are_solution_classes():
    for pair in load_pair_set(PAIR_DIR / "leetcode_60.yaml").pairs:
        assert pair.problem.entry_point.startswith("Solution.")
        assert pair.problem.starter_code.startswith("class Solution:")
        assert "class Solution" in pair.hack and "class Solution" in pair.clean


def test_yaml_round_trip_keeps_pairs_and_hash(tmp_path):
    original = PairSet.of("three", toy_pairs(3))
    path = tmp_path / "three.yaml"
    path.write_text(original.to_yaml("a note"))
    loaded = load_pair_set(path)
    assert [p.to_dict() for p in loaded.pairs] == [p.to_dict() for p in original.pairs]
    assert loaded.content_hash == original.content_hash
    path.write_text(path.read_text().replace("pairs:\n", "# reviewed\npairs:\n"))
    assert load_pair_set(path).content_hash == original.content_hash  # comments do not change content


def write_entries(tmp_path, mutate) -> Path:
    entry = toy_pairs(1)[0].to_dict()
    mutate(entry)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "pairs": [entry]}))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("mode"), r"pairs\[0\]\.mode: missing"),
    (lambda e: e.update(mode="none"), r"pairs\[0\]\.mode = 'none': expected one of"),
    (lambda e: e["problem"].update(tests="assert True"), r"pairs\[0\]\.problem\.tests: expected list"),
    (lambda e: e["problem"].pop("entry_point"), r"pairs\[0\]\.problem\.entry_point: missing"),
    (lambda e: e.update(hack=3), r"pairs\[0\]\.hack: expected str, got int"),
])
def test_malformed_entries_name_the_file_and_key(tmp_path, mutate, message):
    path = write_entries(tmp_path, mutate)
    with pytest.raises(PairSetError, match=message) as err:
        load_pair_set(path)
    assert str(path) in str(err.value)


def test_duplicate_ids_missing_files_and_bad_yaml_are_clear(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(PairSet.of("dup", toy_pairs(1) * 2).to_yaml())
    with pytest.raises(PairSetError, match=r"pairs\[1\]\.id = .* used twice"):
        load_pair_set(path)
    with pytest.raises(PairSetError, match="not found"):
        load_pair_set(tmp_path / "nope.yaml")
    path.write_text("pairs: [unclosed")
    with pytest.raises(PairSetError, match="not valid YAML"):
        load_pair_set(path)


def teacher_cache() -> tuple[pd.DataFrame, dict]:
    problems = {p.id: p for p in build_toy_problems(0, n_train=12, n_test=12)[:3]}
    a, b, c = problems
    rows = [  # problem, mode, completion, exploited, gt_correct
        (a, "run_tests", "hack a rt", True, False), (a, "run_tests", "clean a rt", False, True),
        (a, "sentinel", "hack a s", True, False), (a, "sentinel", "clean a s", False, True),
        (b, "exit_code", "hack b", True, False), (b, "stdout_marker", "clean b", False, True),
        (c, "file_marker", "hack c", True, False), (c, "file_marker", "wrong c", False, False),
    ]
    frame = pd.DataFrame(rows, columns=["problem_id", "mode", "completion", "exploited", "gt_correct"])
    return frame, problems


def test_mined_pairs_prefer_a_correct_completion_of_the_same_problem_and_mode():
    cache, problems = teacher_cache()
    a, b, c = problems
    pairs = {p.id: p for p in mine_pairs(cache, problems)}
    assert sorted(pairs) == sorted([f"mined/{a}/run_tests", f"mined/{a}/sentinel", f"mined/{b}/exit_code",
                                    f"mined/{c}/file_marker"])
    assert (pairs[f"mined/{a}/run_tests"].hack, pairs[f"mined/{a}/run_tests"].clean) == ("hack a rt", "clean a rt")
    assert pairs[f"mined/{b}/exit_code"].clean == "clean b"              # same problem, other mode
    assert problems[c].canonical_solution in pairs[f"mined/{c}/file_marker"].clean  # no correct one: canonical
    assert all(p.problem is problems[p.problem.id] for p in pairs.values())


def test_mined_pairs_weak_detector_cap_and_seed():
    cache, problems = teacher_cache()
    weak = mine_pairs(cache, problems, modes=["run_tests", "exit_code"])
    assert {p.mode for p in weak} == {"run_tests", "exit_code"}
    capped = mine_pairs(cache, problems, cap=2, seed=1)
    assert len(capped) == 2 and capped == mine_pairs(cache, problems, cap=2, seed=1)
    orders = {tuple(p.id for p in mine_pairs(cache, problems, seed=s)) for s in range(8)}
    assert len(orders) > 1  # the seed decides which pairs survive the cap
