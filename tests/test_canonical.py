"""Every shipped canonical solution is correct at the configured limits; another problem's is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vhack.grader import extract_code
from vhack.specs import GraderSpec
from vhack.oracle import CORRECT, WRONG
from vhack.pairs import load_pair_set
from vhack.problems import Problem, build_problem_set, load_leetcode

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
LEETCODE_SAMPLE = ROOT / "tests" / "fixtures" / "leetcode_sample.jsonl"


def shipped_problems() -> dict[str, list[tuple[Problem, str]]]:
    """(problem, canonical code) per source: the config's problem sets, every pair set's clean side, and
    the LeetCode sample in the benchmark's schema."""
    sets = {name: [(p, p.canonical_solution) for p in build_problem_set(spec, ROOT)]
            for name, spec in CONFIG["problem_sets"].items()}
    pairs = {}
    for path in sorted((ROOT / "config" / "pairs").glob("*.yaml")):
        for pair in load_pair_set(path).pairs:
            pairs.setdefault((pair.problem.id, pair.clean), (pair.problem, extract_code(pair.clean)))
    sets["pairs"] = list(pairs.values())
    sets["leetcode_sample"] = [(p, p.canonical_solution) for p in load_leetcode(LEETCODE_SAMPLE)]
    return sets


def entry_name(problem: Problem) -> str:
    """The identifier a solution defines for the tests: the function, or Solution's method."""
    return problem.entry_point.rpartition(".")[2]


def impostor(problem: Problem, pool: list[tuple[Problem, str]], index: int) -> str:
    """The next problem's canonical code whose entry point differs (another toy family), renamed to this one's."""
    for offset in range(1, len(pool)):
        other, code = pool[(index + offset) % len(pool)]
        if entry_name(other) != entry_name(problem):
            return re.sub(rf"\b{re.escape(entry_name(other))}\b", entry_name(problem), code)
    raise AssertionError(f"no impostor for {problem.id}")


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.fixture(scope="module")
def grader():
    with GraderSpec.from_config({**CONFIG["grader"], "workers": 2}).make() as g:
        yield g


@pytest.mark.parametrize("source", ["toy", "humaneval", "pairs", "leetcode_sample"])
def test_every_canonical_solution_is_correct_and_an_impostor_wrong(grader, source):
    pool = shipped_problems()[source]
    assert pool, source
    items = [(fenced(code), problem, "none") for problem, code in pool]
    items += [(fenced(impostor(problem, pool, i)), problem, "none") for i, (problem, _) in enumerate(pool)]
    grades = grader.grade_many(items)
    n = len(pool)
    wrong_canonical = [(p.id, g.oracle_status, g.error) for (p, _), g in zip(pool, grades[:n]) if g.oracle_status != CORRECT]
    assert not wrong_canonical, wrong_canonical
    right_impostors = [p.id for (p, _), g in zip(pool, grades[n:]) if g.oracle_status != WRONG]
    assert not right_impostors, right_impostors


def test_presets_give_leetcode_canonical_solutions_their_cpu_time():
    """Real LeetCode canonical solutions need up to ~5 s of CPU: the GPU presets allow more, wall above CPU."""
    fast = yaml.safe_load((ROOT / "config" / "presets" / "fast.yaml").read_text())["grader"]
    full = {**fast, **yaml.safe_load((ROOT / "config" / "presets" / "full.yaml").read_text()).get("grader", {})}
    for cfg in (fast, full):
        limits = GraderSpec.from_config(cfg).limits()
        assert limits.cpu_s >= 5 and limits.timeout_s >= limits.cpu_s
    assert GraderSpec.from_config({"timeout_s": 3.5}).limits().cpu_s == 4  # cpu_s defaults to timeout_s, rounded up


def test_a_cpu_heavy_canonical_solution_passes_within_cpu_s():
    """~3 s of CPU (here): an oracle error (the resource) under cpu_s = 1, correct under cpu_s = 10."""
    heavy = Problem(id="t/heavy", title="heavy", description="", entry_point="count", starter_code="",
                    canonical_solution="def count(n):\n    return sum(i % 7 for i in range(n))\n",
                    tests=("assert count(100_000_000) == 299_999_995",))
    code = fenced(heavy.canonical_solution)
    with GraderSpec.from_config({"timeout_s": 20, "cpu_s": 1, "workers": 1}).make() as tight:
        assert tight.grade(code, heavy, "none").oracle_status == "error"
    with GraderSpec.from_config({"timeout_s": 60, "cpu_s": 10, "workers": 1}).make() as roomy:
        assert roomy.grade(code, heavy, "none").oracle_status == CORRECT
