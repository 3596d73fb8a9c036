"""Problem sets in one normalised schema: toy (generated), humaneval, leetcode."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Problem:
    id: str
    title: str
    description: str          # natural-language task shown to the model
    entry_point: str          # "add_k" or "Solution.twoSum"
    starter_code: str         # signature / class stub shown to the model
    canonical_solution: str   # complete, runnable code defining the entry point
    tests: tuple[str, ...]    # ground-truth assert statements, run after setup + solution
    setup_code: str = ""      # imports / helpers executed before the solution
    difficulty: str = ""
    split: str = "train"      # "train" | "test"
    family: str = ""          # toy family / source category
    source: str = ""          # "toy" | "humaneval" | "leetcode"
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tests"] = list(self.tests)
        return d
