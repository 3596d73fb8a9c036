"""GRPO with cached-teacher mixing and gradient projection: the pieces of one step.

Read top to bottom: group advantages, token log-probs, the loss (student rows
on-policy with a clipped ratio, teacher rows advantage-weighted imitation), and
the per-step metrics. The loop that strings them together is `trainer.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of one run (config key `train`, after arm and row overrides)."""

    student: str
    adapter: str
    problem_set: str
    teacher: str | None
    train_modes: tuple[str, ...]
    steps: int
    prompts_per_step: int
    group_size: int
    mix: float
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float | None = 1.0
    beta_kl: float = 0.0
    clip_eps: float = 0.2
    advantage: str = "centered"           # centered (Dr. GRPO: R − mean) | standardized (GRPO: / std)
    loss_agg: str = "fixed_denominator"   # fixed_denominator (Dr. GRPO: rows × max_new_tokens) | token_mean
    basis: str | None = None
    projection: str = "erase"
    gate: str = "one_sided"
    overshoot: float = 1.0
    preserve_magnitude: bool = False
    project_on: str = "grad"      # "update" also cleans the applied change; implied by refresh_every > 0
    refresh_every: int = 0
    k_use: int | None = None
    drop_bottom_frac: float = 0.0
    temperature: float = 1.0
    max_new_tokens: int = 64
    checkpoint_every: int = 0
    test_samples: int = 4
    tags: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise KeyError(f"unknown training settings {unknown}; known: {sorted(known)}")
        s = dict(settings)
        for key in ("train_modes", "adam_betas", "tags"):
            if key in s and s[key] is not None:
                s[key] = tuple(s[key])
        return cls(**s)

    @property
    def teacher_rows(self) -> int:
        """G_t cached teacher rows per group (`teacher_rows_per_group`); the rest are live student rows."""
        return teacher_rows_per_group(self.group_size, self.mix, self.teacher)

    @property
    def student_rows(self) -> int:
        return self.group_size - self.teacher_rows


def teacher_rows_per_group(group_size: int, mix: float, teacher: str | None) -> int:
    """G_t = round(G·mix) cached teacher rows per group (halves round up); 0 without a teacher.

    Python's round() rounds halves to even: with G=4, mix 0.125 would give 0 teacher rows, i.e. mix 0.
    Two mixes with the same G_t are the same training (G=4: mix 0.25 and 0.125 both give 1).
    """
    return math.floor(group_size * mix + 0.5) if teacher else 0


def group_advantages(rewards: Tensor, kind: str = "centered", eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """rewards [groups, G] → advantages [groups, G] and a zero-variance mask [groups].

    centered (Dr. GRPO): A = R − mean(R), no std division; standardized (GRPO): also / (std + eps).
    Zero-variance groups carry no signal: their advantages are exactly 0.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    zero_var = std.squeeze(1) < 1e-8
    if kind == "standardized":
        centered = centered / (std + eps)
    elif kind != "centered":
        raise ValueError(f"advantage={kind!r}: expected centered or standardized")
    return centered.masked_fill(zero_var.unsqueeze(1), 0.0), zero_var


LOGPROB_CHUNK = 2048  # positions per lm_head + log-softmax chunk: [2048, V] fp32 logits at a time


def token_logprobs(model, input_ids: Tensor, attention_mask: Tensor, chunk: int = LOGPROB_CHUNK) -> Tensor:
    """log π(x_t | x_<t) for t ≥ 1: [B, T] ids → [B, T-1] log-probs (fp32).

    The lm_head and log-softmax run on `chunk` positions at a time and are recomputed in the backward
    (checkpointed), so the [B, T, V] fp32 logits (2.5 GB at 4 x 1,024 tokens of Qwen3) never exist whole.
    """
    from torch.utils.checkpoint import checkpoint

    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    targets = input_ids[:, 1:]
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)          # [B·(T-1), H], [B·(T-1)]
    run = (lambda *a: checkpoint(chunk_logprobs, *a, use_reentrant=False)) if torch.is_grad_enabled() \
        else chunk_logprobs
    pieces = [run(model.lm_head, h[i: i + chunk], t[i: i + chunk]) for i in range(0, len(t), chunk)]
    return torch.cat(pieces).view(targets.shape)


def chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """[N, H] hidden states, [N] targets -> [N] log-probs (fp32)."""
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(π‖π_ref) estimate exp(r) − r − 1 with r = ref − logp (≥ 0, unbiased)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def policy_token_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, off_policy: Tensor,
                      clip_eps: float) -> Tensor:
    """Per-token loss [B, T-1].

    On-policy (student) rows: PPO-clipped ratio objective −min(ρA, clip(ρ)A).
    Off-policy (teacher) rows: advantage-weighted imitation −A·log π; a ratio
    against the student's own old policy is meaningless for text it did not sample.
    """
    adv = advantages.unsqueeze(1)                                   # [B, 1]
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    on_policy = -torch.minimum(ratio * adv, clipped * adv)
    imitation = -adv * logp
    return torch.where(off_policy.unsqueeze(1), imitation, on_policy)


def loss_denominator(kind: str, completion_mask: Tensor, n_rows: int, max_new_tokens: int) -> float:
    """fixed_denominator (Dr. GRPO): n_rows × max_new_tokens, no length normalisation; token_mean: real token count."""
    if kind == "fixed_denominator":
        return float(n_rows * max_new_tokens)
    if kind == "token_mean":
        return float(completion_mask.sum().clamp_min(1))
    raise ValueError(f"loss_agg={kind!r}: expected fixed_denominator or token_mean")


@dataclass
class Batch:
    """Right-padded rows of prompt + completion. Shapes: [B, T] and [B]."""

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor     # [B, T-1]: 1 where the *target* token is a completion token
    advantages: Tensor          # [B]
    off_policy: Tensor          # [B] bool: teacher rows

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask,
                                              self.advantages, self.off_policy)))

    def rows(self, index) -> "Batch":
        """The rows `index` selects (a slice or an index tensor)."""
        return Batch(*(t[index] for t in (self.input_ids, self.attention_mask, self.completion_mask,
                                          self.advantages, self.off_policy)))

    def by_length(self) -> "Batch":
        """Rows longest first, so micro-batches of neighbours carry little padding (the loss is a sum over rows)."""
        return self.rows(torch.argsort(self.attention_mask.sum(1), descending=True, stable=True))

    def trimmed(self) -> "Batch":
        """Without the trailing columns that are padding in every row: causal attention means they change
        no log-prob of a real token, and the completion mask is 0 there."""
        width = int(self.attention_mask.sum(1).max())
        return Batch(self.input_ids[:, :width], self.attention_mask[:, :width], self.completion_mask[:, :width - 1],
                     self.advantages, self.off_policy)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_batch(prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], advantages: Sequence[float],
               off_policy: Sequence[bool], pad_id: int) -> Batch:
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    n = len(prompt_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    completion = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids = list(p) + list(c)
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        completion[i, len(p) - 1: len(ids) - 1] = 1.0   # targets shifted by one
    return Batch(input_ids, attention, completion, torch.tensor(advantages, dtype=torch.float32),
                 torch.tensor(off_policy, dtype=torch.bool))


def backward_rows(model, batch: Batch, cfg: TrainConfig, denominator: float, micro_batch: int,
                  ref_logprobs=None) -> dict[str, float]:
    """Accumulate ∇ of this batch's share of the loss (summed over tokens / the global denominator).

    `ref_logprobs(micro) -> [b, T-1]` gives the reference policy's log-probs when β > 0. Rows with A = 0
    (zero-variance groups) are skipped when β = 0. Returns the summed loss and KL (already divided by the denominator).
    """
    device = next(model.parameters()).device
    total_loss, total_kl = 0.0, 0.0
    if not cfg.beta_kl:   # without the KL term a row with A = 0 adds exactly 0 to the loss and its gradient
        batch = batch.rows(torch.nonzero(batch.advantages != 0).squeeze(1))
    batch = batch.by_length()
    for start in range(0, len(batch), micro_batch):
        mb = batch.rows(slice(start, start + micro_batch)).trimmed().to(device)
        logp = token_logprobs(model, mb.input_ids, mb.attention_mask)           # [b, T-1]
        per_token = policy_token_loss(logp, logp.detach(), mb.advantages, mb.off_policy, cfg.clip_eps)
        if cfg.beta_kl > 0 and ref_logprobs is not None:
            kl = kl_k3(logp, ref_logprobs(mb))
            per_token = per_token + cfg.beta_kl * kl
            total_kl += float((kl * mb.completion_mask).sum()) / denominator
        loss = (per_token * mb.completion_mask).sum() / denominator
        loss.backward()
        total_loss += loss.item()
    return {"loss": total_loss, "kl": total_kl}
