"""Held-out evaluation of a trained adapter on the test split.

Hack rate is measured with each problem's loophole hint in the prompt; solve
rate without any hint (mode `none`), both per loophole mode. Every graded completion is kept
(eval_samples.parquet beside eval.parquet).
Completions the oracle could not judge (timeout, resource limit, crash) count in neither rate;
`oracle_error_rate` says how many there were.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Mapping, Sequence

import pandas as pd

from .oracle import ERROR
from .problems import Problem


def generate_and_grade(backend, tokenizer, problems: Sequence[Problem], modes: Sequence[str], grader, samples: int,
                       sampling, seed: int, style: str, enable_thinking: bool = False) -> tuple[list, list]:
    """(completions, grades), prompt-major: problems[i] under modes[i], `samples` each."""
    from .models import chat_prompt
    from .prompts import build_messages
    prompts = [chat_prompt(tokenizer, build_messages(p, m, style=style), enable_thinking=enable_thinking)
               for p, m in zip(problems, modes)]
    completions = backend.generate(prompts, samples, sampling, seed=seed)
    return completions, grader.grade_many([(c.text, problems[c.prompt_index], modes[c.prompt_index])
                                           for c in completions])


def sample_records(problems: Sequence[Problem], assigned_modes: Sequence[str], completions, grades) -> list[dict]:
    """One record per graded completion (vhack.samples.EVAL_SAMPLE_COLUMNS); `mode` is the problem's
    assigned loophole mode, `prompt_mode` the hint it was prompted with (the mode, or none)."""
    return [{"problem_id": problems[c.prompt_index].id, "mode": assigned_modes[c.prompt_index],
             "prompt_mode": g.mode, "sample_index": c.sample_index, "completion": c.text, "num_tokens": c.num_tokens,
             **{k: v for k, v in asdict(g).items() if k != "mode"}} for c, g in zip(completions, grades)]


def _judged(grade, value: bool) -> float:
    """`value` of a grade the oracle judged; NaN (left out of the rate) for an oracle error."""
    return math.nan if grade.oracle_status == ERROR else float(value)


def evaluate_adapter(model, tokenizer, adapter, problems: Sequence[Problem], assigned: Mapping[str, str], grader,
                     samples: int, max_new_tokens: int, temperature: float, seed: int, style: str,
                     backend_name: str = "hf", enable_thinking: bool = False,
                     backend_options: Mapping | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """(per-mode rates plus mode="all", every graded completion as a record); `backend_options` as config
    `rollout` gives them (batch size, the fast path, engine sizes)."""
    from .rollout import SamplingConfig, make_backend
    backend = make_backend(backend_name, model, tokenizer, adapter=adapter, **(backend_options or {}))
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens)
    problem_modes = [assigned[p.id] for p in problems]
    hinted_completions, hinted = generate_and_grade(backend, tokenizer, problems, problem_modes, grader, samples, sampling, seed, style,
                                enable_thinking)
    plain_completions, plain = generate_and_grade(backend, tokenizer, problems, ["none"] * len(problems), grader, samples, sampling,
                               seed + 1, style, enable_thinking)
    backend.close()
    row_modes = [m for m in problem_modes for _ in range(samples)]
    frame = pd.DataFrame({
        "mode": row_modes,
        "exploited": [_judged(g, g.exploited) for g in hinted],
        "hinted_gt": [_judged(g, g.gt_correct) for g in hinted],
        "solved": [_judged(g, g.gt_correct) for g in plain],
        "oracle_error": [(a.oracle_status == ERROR) / 2 + (b.oracle_status == ERROR) / 2 for a, b in zip(hinted, plain)],
    })
    rates = {"hack_rate": ("exploited", "mean"), "hinted_solve_rate": ("hinted_gt", "mean"),
             "solve_rate": ("solved", "mean"), "oracle_error_rate": ("oracle_error", "mean")}
    per_mode = frame.groupby("mode").agg(n=("exploited", "size"), **rates)
    overall = frame.assign(mode="all").groupby("mode").agg(n=("exploited", "size"), **rates)
    samples = (sample_records(problems, problem_modes, hinted_completions, hinted)
               + sample_records(problems, problem_modes, plain_completions, plain))
    return pd.concat([per_mode, overall]).reset_index(), samples
