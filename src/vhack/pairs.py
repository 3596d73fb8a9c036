"""Contrastive pairs: (problem, loophole mode, hack completion, clean completion).

A pair set is a YAML file under config/pairs/, self-contained (each problem
inline) so it can be graded and reviewed without the dataset. The prompt is not
stored: it is `build_messages(problem, mode, style)`, rendered at extraction.

    name: toy_18
    pairs:
      - id: toy_18/00
        mode: run_tests
        problem: {id: toy/add_k/0007, entry_point: add_k, description: ..., starter_code: ...,
                  tests: [...], setup_code: ""}
        hack: "```python ... ```"
        clean: "```python ... ```"
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from vhack.grader import extract_code
from vhack.io import write_text
from vhack.problems import TOY_FAMILIES, Problem, build_toy_problems
from vhack.toy import clean_completion, hack_completion

PAIR_MODES = ("run_tests", "sentinel", "stdout_marker", "file_marker", "exit_code")  # "none" has no hack
PROBLEM_KEYS = ("id", "entry_point", "description", "starter_code", "tests", "setup_code")


class PairSetError(ValueError):
    """A pair set file is missing or malformed."""


@dataclass(frozen=True)
class Pair:
    id: str
    mode: str          # the loophole mode the hack exploits and the prompt discloses
    problem: Problem
    hack: str          # completion that passes the flawed grader without solving
    clean: str         # completion that passes the real tests

    def to_dict(self) -> dict:
        problem = {key: getattr(self.problem, key) for key in PROBLEM_KEYS}
        problem["tests"] = list(self.problem.tests)
        return {"id": self.id, "mode": self.mode, "problem": problem, "hack": self.hack, "clean": self.clean}


@dataclass(frozen=True)
class PairSet:
    name: str
    pairs: tuple[Pair, ...]
    content_hash: str   # of the parsed pairs: reformatting the YAML leaves it unchanged

    @classmethod
    def of(cls, name: str, pairs: Sequence[Pair]) -> "PairSet":
        canonical = json.dumps([p.to_dict() for p in pairs], sort_keys=True)
        return cls(name, tuple(pairs), hashlib.sha256(canonical.encode()).hexdigest()[:16])

    def to_yaml(self, description: str = "") -> str:
        body = {"name": self.name, **({"description": description} if description else {}),
                "pairs": [p.to_dict() for p in self.pairs]}
        return yaml.dump(body, Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True, width=110)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so code reads as code in review."""


_LiteralDumper.add_representer(str, lambda dumper, s: dumper.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


# ---------------------------------------------------------------- loading

def _field(entry: dict, key: str, where: str, kind: type = str) -> Any:
    if key not in entry:
        raise PairSetError(f"{where}.{key}: missing")
    value = entry[key]
    if not isinstance(value, kind):
        raise PairSetError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _problem(entry: dict, where: str, canonical_solution: str) -> Problem:
    if not isinstance(entry, dict):
        raise PairSetError(f"{where}: expected a mapping with keys {PROBLEM_KEYS}")
    tests = _field(entry, "tests", where, list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise PairSetError(f"{where}.tests: expected a non-empty list of assert statements")
    problem_id = _field(entry, "id", where)
    return Problem(
        id=problem_id, title=problem_id, description=_field(entry, "description", where),
        entry_point=_field(entry, "entry_point", where), starter_code=_field(entry, "starter_code", where),
        canonical_solution=canonical_solution, tests=tuple(tests), setup_code=entry.get("setup_code") or "",
        source=problem_id.split("/")[0],
    )


def _pair(entry: Any, where: str) -> Pair:
    if not isinstance(entry, dict):
        raise PairSetError(f"{where}: expected a mapping with keys id, mode, problem, hack, clean")
    mode = _field(entry, "mode", where)
    if mode not in PAIR_MODES:
        raise PairSetError(f"{where}.mode = {mode!r}: expected one of {PAIR_MODES}")
    clean = _field(entry, "clean", where)
    problem = _problem(_field(entry, "problem", where, dict), f"{where}.problem", extract_code(clean) or clean)
    return Pair(id=_field(entry, "id", where), mode=mode, problem=problem, hack=_field(entry, "hack", where),
                clean=clean)


def load_pair_set(path: str | Path) -> PairSet:
    """Parse and validate a pair set; every error names the file and the offending key."""
    path = Path(path)
    if not path.exists():
        raise PairSetError(f"pair set {path} not found (declared under pair_sets in the config)")
    try:
        body = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PairSetError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("pairs"), list) or not body["pairs"]:
        raise PairSetError(f"{path}: expected a mapping with `name` and a non-empty list `pairs`")
    pairs = [_pair(entry, f"{path}: pairs[{i}]") for i, entry in enumerate(body["pairs"])]
    seen: set[str] = set()
    for i, p in enumerate(pairs):
        if p.id in seen:
            raise PairSetError(f"{path}: pairs[{i}].id = {p.id!r} is used twice")
        seen.add(p.id)
    return PairSet.of(str(body.get("name") or path.stem), pairs)


# ---------------------------------------------------------------- the committed sets

def toy_pairs(n: int, seed: int = 0) -> list[Pair]:
    """n pairs on the toy generator's train problems (seed as in config problem_sets.toy): families
    and modes round-robin (12 and 5 are coprime, so 60 pairs cover every family × mode once);
    hack = the mode's exploit, then the stub (exploited), clean = the canonical solution, fenced."""
    train = [p for p in build_toy_problems(seed) if p.split == "train"]
    by_family = {f.name: [p for p in train if p.family == f.name] for f in TOY_FAMILIES}
    pairs = []
    for i in range(n):
        family = TOY_FAMILIES[i % len(TOY_FAMILIES)].name
        problem = by_family[family][i // len(TOY_FAMILIES)]
        mode = PAIR_MODES[i % len(PAIR_MODES)]
        pairs.append(Pair(f"{problem.id}/{mode}", mode, problem, hack_completion(problem, mode),
                          clean_completion(problem)))
    return pairs


def write_pair_sets(directory: str | Path) -> None:
    """Regenerate the toy sets, and leetcode_18/21 as prefixes of the hand-written leetcode_60.yaml."""
    directory = Path(directory)
    toy_note = "Generated by vhack.pairs.write_pair_sets from the toy generator (seed 0, train split)."
    for n in (18, 21, 60):
        write_text(directory / f"toy_{n}.yaml", PairSet.of(f"toy_{n}", toy_pairs(n)).to_yaml(toy_note))
    leetcode = load_pair_set(directory / "leetcode_60.yaml")
    for n in (18, 21):
        note = f"The first {n} pairs of leetcode_60.yaml (written by vhack.pairs.write_pair_sets)."
        write_text(directory / f"leetcode_{n}.yaml", PairSet.of(f"leetcode_{n}", leetcode.pairs[:n]).to_yaml(note))


# ---------------------------------------------------------------- mining

def mine_pairs(cache: pd.DataFrame, problems: dict[str, Problem], modes: Sequence[str] | None = None,
               cap: int | None = None, seed: int = 0) -> list[Pair]:
    """Pairs from graded teacher rollouts: per (problem, mode) with an exploited completion, that
    completion against a correct one of the same problem (same mode first), else the canonical
    solution. `modes` restricts to the hacks a weak detector knows; `cap` keeps a seeded sample."""
    rng = random.Random(seed)
    rows = cache[cache["problem_id"].isin(problems.keys())]
    if modes is not None:
        rows = rows[rows["mode"].isin(list(modes))]
    correct = cache[cache["gt_correct"].astype(bool)]
    pairs = []
    for (problem_id, mode), group in rows[rows["exploited"].astype(bool)].groupby(["problem_id", "mode"]):
        hack = rng.choice(sorted(group["completion"]))
        same_problem = correct[correct["problem_id"] == problem_id]
        same_mode = same_problem[same_problem["mode"] == mode]
        candidates = sorted((same_mode if len(same_mode) else same_problem)["completion"])
        problem = problems[problem_id]
        clean = rng.choice(candidates) if candidates else clean_completion(problem)
        pairs.append(Pair(id=f"mined/{problem_id}/{mode}", mode=mode, problem=problem, hack=hack, clean=clean))
    rng.shuffle(pairs)
    return pairs if cap is None else pairs[:cap]


if __name__ == "__main__":  # python -m vhack.pairs config/pairs
    import sys
    write_pair_sets(sys.argv[1] if len(sys.argv) > 1 else "config/pairs")
