"""The training loop of one run: sample, score, advantages, loss, backward, project, step, log.

Every source of randomness in a step is derived from (seed, step), so a run
killed mid-way and resumed from its checkpoint ends with the same metrics as an
uninterrupted one (CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from .grpo import Batch, TrainConfig, backward_rows, group_advantages, loss_denominator, make_batch
from .io import write_parquet
from .problems import Problem
from .projection import ProjectionConfig, hackward_fraction, project_gradients_, project_update_, snapshot
from .grader import GRADE_FIELDS
from .samples import read_samples, step_samples, write_samples
from .specs import ComputeSpec
from .train_kernels import training_kernels

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int, stream: str) -> int:
    """A stable 63-bit seed for one stream (problems, rollouts, teacher rows) of one step."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class RunContext:
    """Everything a run needs, resolved once by the entry point."""

    cfg: TrainConfig
    seed: int
    model: Any
    tokenizer: Any
    adapter: Any                       # vhack.adapters.Adapter
    backend: Any                       # vhack.rollout.RolloutBackend
    grader: Any                        # vhack.grader.Grader
    problems: list[Problem]            # train split, modes assigned
    modes: dict[str, str]              # problem id -> loophole mode
    all_modes: tuple[str, ...]         # modes in play (per-mode metrics)
    prompt_style: str
    teacher_cache: pd.DataFrame | None
    basis: Any | None                  # vhack.basis.Basis
    refresh: Any | None = None         # callable(model, tokenizer, adapter) -> Basis
    micro_batch: int = ComputeSpec.micro_batch_size
    fused_kernels: bool = ComputeSpec.fused_kernels     # vhack.train_kernels in the backward (CUDA)
    share_prompts: bool = ComputeSpec.share_prompts     # a group's rows share one prompt pass (grpo.pack_rows)
    enable_thinking: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    teacher_index: dict = field(default_factory=dict)   # (problem id, mode) -> cache row positions
    projection: ProjectionConfig = field(init=False)     # how gradients (and updates) are projected
    project_update: bool = field(init=False)             # also clean the applied change (see __post_init__)
    samples: list[dict] = field(default_factory=list)    # every trained row so far (vhack.samples records)
    tracker: Any | None = None                           # vhack.tracking.Tracker: live per-step curves

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.projection = ProjectionConfig(mode="erase" if cfg.projection == "erase" else "none", gate=cfg.gate,
                                           overshoot=cfg.overshoot, preserve_magnitude=cfg.preserve_magnitude)
        # A refreshed basis meets Adam moments built against the old one: projecting only g would let them
        # step along the new V (cin of the update ≈ vanilla's). So a refresh implies projecting the update.
        self.project_update = cfg.projection == "erase" and (cfg.project_on == "update" or cfg.refresh_every > 0)


# ---------------------------------------------------------------- sampling and scoring

def draw_problems(ctx: RunContext, step: int) -> list[Problem]:
    rng = random.Random(step_seed(ctx.seed, step, "problems"))
    return rng.sample(ctx.problems, min(ctx.cfg.prompts_per_step, len(ctx.problems)))


def prompt_text(ctx: RunContext, problem: Problem) -> str:
    if problem.id not in ctx.prompts:
        from .models import chat_prompt
        from .prompts import build_messages
        messages = build_messages(problem, ctx.modes[problem.id], style=ctx.prompt_style)
        ctx.prompts[problem.id] = chat_prompt(ctx.tokenizer, messages, enable_thinking=ctx.enable_thinking)
    return ctx.prompts[problem.id]


def teacher_rows(ctx: RunContext, problems: Sequence[Problem], step: int) -> list[list[dict]]:
    """G_t cached teacher rows per problem (same mode as the student's prompt)."""
    n = ctx.cfg.teacher_rows
    if n == 0:
        return [[] for _ in problems]
    rng = random.Random(step_seed(ctx.seed, step, "teacher"))
    if not ctx.teacher_index and ctx.teacher_cache is not None:   # built once per run, not per step
        ctx.teacher_index = ctx.teacher_cache.groupby(["problem_id", "mode"]).indices
    out = []
    for p in problems:
        idx = list(ctx.teacher_index.get((p.id, ctx.modes[p.id]), []))
        if len(idx) < n:
            log.warning("teacher cache has %d rows for %s (mode %s), %d needed; %s", len(idx), p.id,
                        ctx.modes[p.id], n, "sampling with replacement" if idx else "group has no teacher rows")
            picks = [rng.choice(idx) for _ in range(n)] if idx else []
        else:
            picks = rng.sample(idx, n)
        out.append([ctx.teacher_cache.iloc[i].to_dict() for i in picks])
    return out


def student_rollouts(ctx: RunContext, problems: Sequence[Problem], step: int):
    from .rollout import SamplingConfig
    sampling = SamplingConfig(temperature=ctx.cfg.temperature, top_p=1.0, top_k=0,
                              max_new_tokens=ctx.cfg.max_new_tokens)
    prompts = [prompt_text(ctx, p) for p in problems]
    return ctx.backend.generate(prompts, ctx.cfg.student_rows, sampling, seed=step_seed(ctx.seed, step, "rollout"))


# ---------------------------------------------------------------- one step, phase by phase

@dataclass
class Row:
    """One row of a GRPO group: a live student completion or a cached teacher one."""

    group: int                 # index of its problem in the step's draw
    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float
    off_policy: bool           # a cached teacher row (advantage-weighted imitation)
    grade: dict
    mode: str
    problem_id: str
    text: str                  # the completion as generated (student) or cached (teacher)
    num_tokens: int | None


@dataclass
class Sampled:
    problems: list[Problem]
    completions: list            # vhack.rollout.Completion, G_s per problem; .prompt_index is the group
    teachers: list[list[dict]]   # per problem, its G_t cached teacher rows


def sample(ctx: RunContext, step: int) -> Sampled:
    """Draw the step's problems; G_s live student rollouts and G_t cached teacher rows per problem."""
    problems = draw_problems(ctx, step)
    ctx.model.eval()
    completions = student_rollouts(ctx, problems, step) if ctx.cfg.student_rows else []
    return Sampled(problems, completions, teacher_rows(ctx, problems, step))


def score(ctx: RunContext, sampled: Sampled) -> list[Row]:
    """Grade the student completions; all rows in group order (per group: student rows, then teacher rows)."""
    problems, tok = sampled.problems, ctx.tokenizer
    grades = ctx.grader.grade_many([(c.text, problems[c.prompt_index], ctx.modes[problems[c.prompt_index].id])
                                    for c in sampled.completions])
    prompt_ids = [tok(prompt_text(ctx, p), add_special_tokens=False)["input_ids"] for p in problems]
    rows = [Row(c.prompt_index, prompt_ids[c.prompt_index], list(c.token_ids), g.reward, False, asdict(g),
                ctx.modes[problems[c.prompt_index].id], problems[c.prompt_index].id, c.text, c.num_tokens)
            for c, g in zip(sampled.completions, grades)]
    for group, (problem, cached) in enumerate(zip(problems, sampled.teachers)):
        for t in cached:
            ids = tok(t["completion"], add_special_tokens=False)["input_ids"][: ctx.cfg.max_new_tokens - 1]
            rows.append(Row(group, prompt_ids[group], ids + [tok.eos_token_id], float(t["reward"]), True,
                            {k: t[k] for k in GRADE_FIELDS if k in t}, ctx.modes[problem.id], problem.id,
                            t["completion"], t.get("num_tokens")))
    return sorted(rows, key=lambda row: row.group)   # stable: student rows stay ahead of teacher rows


def advantages(rows: Sequence[Row], kind: str) -> tuple[list[float], int]:
    """Group-relative advantages, group by group (a teacher-cache gap makes groups uneven), and the
    number of zero-variance groups (their advantages are 0: no signal)."""
    members: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        members.setdefault(row.group, []).append(i)
    out, zero_var = [0.0] * len(rows), 0
    for indices in members.values():
        rewards = torch.tensor([[rows[i].reward for i in indices]], dtype=torch.float32)   # [1, G]
        adv, zero = group_advantages(rewards, kind)
        for i, a in zip(indices, adv[0].tolist()):
            out[i] = a
        zero_var += int(zero.sum())
    return out, zero_var


def backward_by_part(ctx: RunContext, optimizer, rows: Sequence[Row], advantage: Sequence[float]
                     ) -> tuple[dict, dict, dict]:
    """The loss's gradient, student and teacher parts apart (for cin_s / cin_t): (g_s, g_t, loss stats)."""
    ctx.model.train()
    optimizer.zero_grad(set_to_none=True)
    batch = make_batch([r.prompt_ids for r in rows], [r.completion_ids for r in rows], advantage,
                       [r.off_policy for r in rows], ctx.tokenizer.pad_token_id)
    denominator = loss_denominator(ctx.cfg.loss_agg, batch.completion_mask, len(batch), ctx.cfg.max_new_tokens)
    return split_gradients(ctx, batch, denominator)


def split_gradients(ctx: RunContext, batch: Batch, denominator: float) -> tuple[dict, dict, dict]:
    """Backward the student rows, snapshot g_s, then the teacher rows; g_t = g − g_s (no double counting)."""
    from .grpo import completion_logprobs

    def reference_logprobs(mb):   # the base model: adapter off
        with torch.no_grad(), ctx.adapter.disabled():
            return completion_logprobs(ctx.model, mb)
    ref = reference_logprobs if ctx.cfg.beta_kl > 0 else None
    student = torch.nonzero(~batch.off_policy).squeeze(1)
    teacher = torch.nonzero(batch.off_policy).squeeze(1)
    stats = {"loss": 0.0, "kl": 0.0}
    g_student: dict[str, torch.Tensor] = {}
    with training_kernels(ctx.model, ctx.fused_kernels):
        for part, is_student in ((student, True), (teacher, False)):
            if len(part):
                out = backward_rows(ctx.model, batch.rows(part), ctx.cfg, denominator, ctx.micro_batch, ref,
                                    share_prompts=ctx.share_prompts)
                stats = {k: stats[k] + out[k] for k in stats}
            if is_student:
                g_student = {n: g.detach().clone() for n, g in ctx.adapter.flat_grads().items()}
    g_all = ctx.adapter.flat_grads()
    g_teacher = {n: g_all[n] - g_student[n] for n in g_all}
    return g_student, g_teacher, stats


def project(ctx: RunContext, g_student: dict, g_teacher: dict) -> dict[str, float]:
    """Measure the hack-ward fractions always, erase them unless vanilla, then clip the gradient."""
    grads = ctx.adapter.flat_grads()
    m = {"grad_norm_pre": _norm(grads)}
    if ctx.basis is not None:
        m["cin_s"] = hackward_fraction(g_student, ctx.basis)
        m["cin_t"] = hackward_fraction(g_teacher, ctx.basis) if ctx.cfg.teacher_rows else math.nan
        stats = project_gradients_(grads, ctx.basis, ctx.projection)
        m.update(cin=stats.cin, cout=stats.cout, gate_fired_frac=stats.gate_fired_frac)
    m["grad_norm_post"] = _norm(grads)
    if ctx.cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(ctx.adapter.params.values()), ctx.cfg.max_grad_norm)
    return m


def optimizer_step(ctx: RunContext, optimizer, scheduler) -> dict[str, float]:
    """AdamW steps; where the run projects the update, the applied change Δ itself is cleaned
    (Adam rescales and carries momentum, so a projected gradient leaks)."""
    params = ctx.adapter.flat_params()
    before = snapshot(params)
    optimizer.step()
    scheduler.step()
    if ctx.basis is None:
        return {}
    delta = {n: params[n].detach() - before[n] for n in params}
    m = {"cin_update": hackward_fraction(delta, ctx.basis, is_gradient=False)}
    m["cout_update"] = (project_update_(params, before, ctx.basis, ctx.projection).cout if ctx.project_update
                        else m["cin_update"])
    return m


def refresh_basis(ctx: RunContext, step: int) -> float:
    """Every `refresh_every` steps, re-extract the basis from the current weights; its overlap with the old one."""
    if ctx.refresh is None or not ctx.cfg.refresh_every or (step + 1) % ctx.cfg.refresh_every:
        return math.nan
    new_basis = ctx.refresh(ctx.model, ctx.tokenizer, ctx.adapter)
    overlap = basis_overlap(ctx.basis, new_basis)
    ctx.basis = new_basis
    return overlap


def basis_overlap(old, new) -> float:
    """Mean over modules of ‖V_old V_newᵀ‖_F² / k: 1 = same subspace, ~k/r = unrelated."""
    vals = []
    for name, v_new in new.vectors.items():
        v_old = old.vectors.get(name)
        if v_old is None or v_old.numel() == 0 or v_new.numel() == 0:
            continue
        vals.append(float((v_old.float() @ v_new.float().T).square().sum()) / max(1, min(len(v_old), len(v_new))))
    return sum(vals) / len(vals) if vals else math.nan


def rate(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


def judged(grades: Sequence[dict]) -> list[dict]:
    """Grades the oracle could judge: an oracle error (timeout, resource limit, crash) is neither a solve nor a hack."""
    return [g for g in grades if g["oracle_status"] != "error"]


def oracle_error_rate(grades: Sequence[dict]) -> float:
    return rate([g["oracle_status"] == "error" for g in grades])


def step_metrics(ctx: RunContext, step: int, sampled: Sampled, rows: Sequence[Row], zero_var: int,
                 loss_stats: dict, measured: dict, clock: dict[str, float], lr_step: float) -> dict[str, Any]:
    """The step's row of metrics.parquet (names described in vhack.metrics)."""
    student = [r.grade for r in rows if not r.off_policy]
    teacher = [r.grade for r in rows if r.off_policy]
    completions = sampled.completions
    n_tokens = sum(c.num_tokens for c in completions)
    return {
        "step": step,
        "reward_mean": sum(r.reward for r in rows) / len(rows),
        "pass_rate": rate([r.grade["passed"] for r in rows]),
        "hack_s": rate([g["exploited"] for g in judged(student)]),
        "hack_t": rate([g["exploited"] for g in judged(teacher)]),
        "gt_s": rate([g["gt_correct"] for g in judged(student)]),
        "gt_t": rate([g["gt_correct"] for g in judged(teacher)]),
        "oracle_error_rate": oracle_error_rate(student),
        "format_rate": rate([g["format_ok"] for g in student]),
        **{f"hack_s_{mode}": rate([g["exploited"] for g in judged([r.grade for r in rows
                                                                    if not r.off_policy and r.mode == mode])])
           for mode in ctx.all_modes},
        "loss": loss_stats["loss"],
        "kl": loss_stats["kl"] if ctx.cfg.beta_kl > 0 else math.nan,
        "grad_norm_pre": measured["grad_norm_pre"],
        "grad_norm_post": measured["grad_norm_post"],
        **{k: measured.get(k, math.nan) for k in ("cin", "cout", "cin_update", "cout_update", "cin_s", "cin_t",
                                                  "gate_fired_frac", "basis_overlap")},
        "zero_var_groups": zero_var,
        "completion_len": n_tokens / len(completions) if completions else math.nan,
        "tokens_per_s": n_tokens / max(clock["sampled"] - clock["start"], 1e-9),
        "gen_seconds": clock["sampled"] - clock["start"],
        "grade_seconds": clock["scored"] - clock["sampled"],
        "backward_seconds": clock["backward"] - clock["scored"],
        "projection_seconds": clock["projected"] - clock["backward"],
        "step_seconds": clock["refreshed"] - clock["start"],
        "peak_mem_mb": peak_memory_mb(),
        "lr_step": lr_step,   # the scheduled rate this step (setting `lr` is its peak)
    }


def train_step(ctx: RunContext, optimizer, scheduler, step: int) -> dict[str, Any]:
    """One GRPO step, read top to bottom."""
    clock = {"start": time.perf_counter()}
    sampled = sample(ctx, step)
    clock["sampled"] = time.perf_counter()
    rows = score(ctx, sampled)
    clock["scored"] = time.perf_counter()
    advantage, zero_var = advantages(rows, ctx.cfg.advantage)
    ctx.samples += step_samples(step, rows, advantage)
    g_student, g_teacher, loss_stats = backward_by_part(ctx, optimizer, rows, advantage)
    clock["backward"] = time.perf_counter()
    measured = project(ctx, g_student, g_teacher)
    clock["projected"] = time.perf_counter()
    measured.update(optimizer_step(ctx, optimizer, scheduler))
    measured["basis_overlap"] = refresh_basis(ctx, step)
    clock["refreshed"] = time.perf_counter()
    if ctx.backend is not None:
        ctx.backend.update_weights(ctx.adapter)
    return step_metrics(ctx, step, sampled, rows, zero_var, loss_stats, measured, clock,
                        scheduler.get_last_lr()[0])


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(t.float().square().sum() for t in tensors.values())))


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- optimizer, checkpoints, the loop

def make_optimizer(adapter, cfg: TrainConfig):
    optimizer = torch.optim.AdamW(list(adapter.params.values()), lr=cfg.lr, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:   # linear warmup, cosine decay to 0
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(ckpt_dir: Path, ctx: RunContext, optimizer, scheduler, step: int, rows: list[dict],
                    run_hash: str) -> None:
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ctx.adapter.save(tmp / "adapter.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "run_hash": run_hash, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                "basis": ctx.basis if ctx.cfg.refresh_every else None}, tmp / "state.pt")
    pd.DataFrame(rows).to_parquet(tmp / "metrics.parquet", index=False)
    write_samples(tmp / "samples.parquet", ctx.samples)
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    tmp.rename(ckpt_dir)


def load_checkpoint(ckpt_dir: Path, ctx: RunContext, optimizer, scheduler, run_hash: str) -> tuple[int, list[dict]]:
    """(next step, metrics so far); (0, []) when there is no usable checkpoint."""
    state_path = ckpt_dir / "state.pt"
    if not state_path.exists():
        return 0, []
    state = torch.load(state_path, weights_only=False)
    if state["run_hash"] != run_hash:
        log.warning("checkpoint %s belongs to different settings; starting from scratch", ckpt_dir)
        return 0, []
    ctx.adapter.load(ckpt_dir / "adapter.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state.get("basis") is not None:
        ctx.basis = state["basis"]
    ctx.backend.update_weights(ctx.adapter)
    if (ckpt_dir / "samples.parquet").exists():
        ctx.samples = read_samples(ckpt_dir / "samples.parquet").to_dict("records")
    else:
        log.warning("checkpoint %s has no samples.parquet: samples.parquet will lack steps 0-%d", ckpt_dir,
                    state["step"])
    log.info("resumed from %s after step %d", ckpt_dir, state["step"])
    return state["step"] + 1, pd.read_parquet(ckpt_dir / "metrics.parquet").to_dict("records")


def train(ctx: RunContext, out_dir: str | Path, run_hash: str, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the loop; writes metrics.parquet, samples.parquet and adapter.safetensors into out_dir."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    optimizer, scheduler = make_optimizer(ctx.adapter, ctx.cfg)
    start, rows = load_checkpoint(ckpt_dir, ctx, optimizer, scheduler, run_hash)
    bar = tqdm(range(start, ctx.cfg.steps), desc=out_dir.name, disable=not progress, mininterval=5)
    for step in bar:
        metrics = train_step(ctx, optimizer, scheduler, step)
        rows.append(metrics)
        if ctx.tracker is not None:
            ctx.tracker.log_step(step, metrics)
        bar.set_postfix(hack_s=f"{metrics['hack_s']:.2f}", gt_s=f"{metrics['gt_s']:.2f}", cin=f"{metrics['cin']:.3f}", refresh=False)
        log.info("step %d %s", step, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                 for k, v in metrics.items()}))
        every = ctx.cfg.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < ctx.cfg.steps:
            save_checkpoint(ckpt_dir, ctx, optimizer, scheduler, step, rows, run_hash)
    frame = pd.DataFrame(rows)
    write_parquet(out_dir / "metrics.parquet", frame)
    write_samples(out_dir / "samples.parquet", ctx.samples)
    ctx.adapter.save(out_dir / "adapter.safetensors")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return frame
