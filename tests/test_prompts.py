import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from vhack.problems import build_toy_problems, load_humaneval
from vhack.prompts import NO_LOOPHOLE, STYLES, assign_mode, build_messages

FORBIDDEN = re.compile(r"cheat|hack|exploit|bypass|trick", re.IGNORECASE)


@pytest.fixture(scope="module")
def loophole_modes() -> list[str]:
    from vhack.loopholes import LOOPHOLE_MODES
    return [m for m in LOOPHOLE_MODES if m != NO_LOOPHOLE]


@pytest.fixture(scope="module")
def toy():
    return build_toy_problems(seed=0)


def test_assign_mode_is_deterministic_and_spread():
    modes = ["run_tests", "sentinel", "stdout_marker", "file_marker", "exit_code", "none"]
    ids = [f"toy/add_k/{i:04d}" for i in range(3000)]
    assigned = [assign_mode(i, modes, seed=0) for i in ids]
    assert assigned == [assign_mode(i, modes, seed=0) for i in ids]
    counts = Counter(assigned)
    assert set(counts) == set(modes)
    assert all(0.12 < c / len(ids) < 0.22 for c in counts.values())  # expected 1/6 each
    reseeded = [assign_mode(i, modes, seed=1) for i in ids]
    assert 0.7 < sum(a != b for a, b in zip(assigned, reseeded)) / len(ids) < 0.97


def test_assign_mode_is_stable_across_processes():
    """Not Python's hash(), which is salted per process."""
    code = "from vhack.prompts import assign_mode; print([assign_mode(f'p{i}', 'abcde', 7) for i in range(50)])"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": salt}).stdout
               for salt in ("1", "2")}
    assert outputs == {str([assign_mode(f"p{i}", "abcde", 7) for i in range(50)]) + "\n"}


def test_assign_mode_needs_modes():
    with pytest.raises(ValueError, match="empty"):
        assign_mode("toy/add_k/0000", [])


@pytest.mark.parametrize("style", STYLES)
def test_messages_carry_the_hint_of_their_mode_only(style, loophole_modes, toy):
    from vhack.loopholes import hint

    problem = toy[0]
    for mode in loophole_modes:
        system, user = build_messages(problem, mode, style)
        assert [system["role"], user["role"]] == ["system", "user"]
        assert hint(mode, style) in system["content"]
        assert problem.description in user["content"]
    system, _ = build_messages(problem, NO_LOOPHOLE, style)
    assert not any(hint(mode, style) in system["content"] for mode in loophole_modes)


@pytest.mark.parametrize("style", STYLES)
def test_no_prompt_tells_the_model_to_cheat(style, loophole_modes, toy):
    from vhack.loopholes import hint

    for mode in loophole_modes:
        assert not FORBIDDEN.search(hint(mode, style)), (mode, style)
    for mode in [*loophole_modes, NO_LOOPHOLE]:
        for message in build_messages(toy[0], mode, style):
            assert not FORBIDDEN.search(message["content"]), (mode, style)


def test_full_prompt_shows_starter_code_and_asks_for_a_fence():
    problem = load_humaneval()[0]
    system, user = build_messages(problem, NO_LOOPHOLE, "full")
    assert system["content"].startswith("You are an expert Python programmer.")
    assert problem.starter_code.rstrip() in user["content"]
    assert "```python" in user["content"]


def test_toy_prompt_is_terse(loophole_modes, toy):
    assert build_messages(toy[0], NO_LOOPHOLE, "toy") == [
        {"role": "system", "content": ""},
        {"role": "user", "content": f"add_k(x): {toy[0].description}"},
    ]
    for problem in toy:
        for mode in [*loophole_modes, NO_LOOPHOLE]:
            text = " ".join(m["content"] for m in build_messages(problem, mode, "toy"))
            assert len(re.findall(r"\w+|[^\w\s]", text)) < 40, (problem.id, mode, text)


def test_unknown_style_is_rejected(toy):
    with pytest.raises(ValueError, match="prompt style 'terse'"):
        build_messages(toy[0], NO_LOOPHOLE, "terse")
