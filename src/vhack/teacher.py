"""The teacher pool: sample a (hacking) teacher once, grade every completion, cache it as Parquet.

Training draws its off-policy teacher rows from this cache instead of running
the teacher live.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any, Mapping

import pandas as pd

from .io import write_parquet
from .oracle import CORRECT, ERROR, ORACLE_STATUSES, WRONG
from .provenance import now
from .specs import ComputeSpec, GraderSpec, LoopholeSpec, RolloutSpec

log = logging.getLogger(__name__)

CACHE_COLUMNS = ("teacher", "problem_id", "mode", "sample_index", "prompt_hash", "completion", "num_tokens",
                 "temperature", "top_p", "max_new_tokens", "backend", "seed", "created_at")


def prompt_hash(prompt: str) -> str:
    import hashlib
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def build_teacher_cache(name: str, params: Mapping[str, Any], problems_path: str, out_path: str,
                        compute: ComputeSpec = ComputeSpec()) -> pd.DataFrame:
    """Sample teacher `name` (params from vhack.specs.teacher_params), grade, write the cache."""
    from .models import ModelSpec, chat_prompt, load_model
    from .problems import read_problems
    from .prompts import build_messages
    from .rollout import SamplingConfig, make_backend

    teacher, model = params["teacher"], params["model"]
    loopholes = LoopholeSpec.from_config(params["loopholes"])
    rollout = RolloutSpec.from_config(params["rollout"])
    problems = read_problems(problems_path, split=teacher.get("split", "train"))
    modes = loopholes.assigned_modes(problems)
    wanted = set(teacher.get("modes", loopholes.modes))
    problems = [p for p in problems if modes[p.id] in wanted][: teacher.get("max_problems")]
    spec = ModelSpec.from_config(model)
    net, tokenizer = load_model(spec)
    prompts = [chat_prompt(tokenizer, build_messages(p, modes[p.id], style=loopholes.prompt_style),
                           enable_thinking=spec.enable_thinking) for p in problems]
    backend_name = teacher.get("backend", rollout.backend)
    backend = make_backend(backend_name, net, tokenizer, **rollout.options)
    sampling = SamplingConfig(temperature=teacher.get("temperature", 1.0), top_p=teacher.get("top_p", 1.0),
                              top_k=0, max_new_tokens=teacher.get("max_new_tokens", 512))
    n = teacher["samples_per_problem"]
    log.info("teacher %s: %d problems x %d samples with %s", name, len(problems), n, backend_name)
    t0 = time.perf_counter()
    completions = backend.generate(prompts, n, sampling, seed=teacher.get("seed", 0))
    gen_s = time.perf_counter() - t0
    n_tokens = sum(c.num_tokens for c in completions)
    log.info("generated %d completions, %d tokens in %.1fs (%.0f tokens/s)", len(completions), n_tokens, gen_s,
             n_tokens / max(gen_s, 1e-9))
    backend.close()
    with GraderSpec.from_config(params["grader"]).make(compute.grader_workers) as grader:
        grades = grader.grade_many([(c.text, problems[c.prompt_index], modes[problems[c.prompt_index].id])
                                    for c in completions], progress=compute.progress)
    created = now()
    rows = []
    for c, g in zip(completions, grades):
        p = problems[c.prompt_index]
        rows.append({
            "teacher": name, "problem_id": p.id, "mode": modes[p.id], "sample_index": c.sample_index,
            "prompt_hash": prompt_hash(prompts[c.prompt_index]), "completion": c.text, "num_tokens": c.num_tokens,
            **asdict(g), "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens, "backend": backend_name, "seed": teacher.get("seed", 0),
            "model": model["path"], "created_at": created,
        })
    frame = pd.DataFrame(rows)
    write_parquet(out_path, frame)
    log.info("teacher %s: exploited %.3f, gt_correct %.3f, format_ok %.3f, oracle errors %.3f over %d rows -> %s",
             name, frame.exploited.mean(), frame.gt_correct.mean(), frame.format_ok.mean(),
             (frame.oracle_status == ERROR).mean(), len(frame), out_path)
    return frame


def validate_cache(frame: pd.DataFrame, path: str = "teacher cache") -> None:
    """Raise if a cache frame lacks a column or holds an impossible grade (called when training loads one)."""
    from .grader import GRADE_FIELDS
    missing = [c for c in (*CACHE_COLUMNS, *GRADE_FIELDS) if c not in frame.columns]
    if missing == ["oracle_status"]:
        raise ValueError(f"{path}: no oracle_status column: it was graded by the old oracle; rebuild it "
                         "(snakemake --forcerun cache_teacher)")
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; rebuild it (snakemake --forcerun cache_teacher)")
    bad = frame[~frame.oracle_status.isin(ORACLE_STATUSES)]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} rows have an oracle_status outside {ORACLE_STATUSES}")
    bad = frame[frame.gt_correct != (frame.oracle_status == CORRECT)]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} rows have gt_correct disagreeing with oracle_status")
    bad = frame[frame.exploited & ~frame.passed]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} rows are exploited without passing")
    bad = frame[frame.exploited & (frame.oracle_status != WRONG)]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} rows are exploited without the oracle saying wrong")
