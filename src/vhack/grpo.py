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
    """log π(x_t | x_<t) for t ≥ 1: [B, T] ids → [B, T-1] log-probs (fp32)."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    targets = input_ids[:, 1:]
    return head_logprobs(model.lm_head, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1),
                         chunk).view(targets.shape)


def head_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, chunk: int = LOGPROB_CHUNK) -> Tensor:
    """[N, H] hidden states, [N] targets -> [N] log-probs (fp32).

    The lm_head and log-softmax run on `chunk` positions at a time and are recomputed in the backward
    (checkpointed), so the [N, V] fp32 logits (2.5 GB at 4 x 1,024 tokens of Qwen3) never exist whole.
    """
    from torch.utils.checkpoint import checkpoint

    run = (lambda *a: checkpoint(chunk_logprobs, *a, use_reentrant=False)) if torch.is_grad_enabled() \
        else chunk_logprobs
    pieces = [run(head, hidden[i: i + chunk], targets[i: i + chunk]) for i in range(0, len(targets), chunk)]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
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
    adv = broadcast_rows(advantages, logp)                          # [B, 1] (or per token: as logp)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    on_policy = -torch.minimum(ratio * adv, clipped * adv)
    imitation = -adv * logp
    return torch.where(broadcast_rows(off_policy, logp), imitation, on_policy)


def broadcast_rows(per_row: Tensor, like: Tensor) -> Tensor:
    """A per-row [B] value against [B, T] tokens (a value already per token is left as is)."""
    return per_row.reshape(per_row.shape + (1,) * (like.dim() - per_row.dim()))


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


# ---------------------------------------------------------------- prompt sharing in the backward

@dataclass
class Pack:
    """Rows with one prompt, laid out as prompt[:-1] followed, per completion c_i, by the segment
    [prompt[-1]] + c_i at the positions it has in its own row. A segment attends to the prompt and to
    itself only, so every log-prob is the unpacked row's while the prompt is run once for the pack."""

    prompt: list[int]
    completions: list[list[int]]
    advantages: list[float]
    off_policy: list[bool]

    def __len__(self) -> int:   # tokens
        return len(self.prompt) - 1 + sum(1 + len(c) for c in self.completions)


@dataclass
class PackedBatch:
    """Packs right-padded to one width. Shapes: [N, L]; the per-target tensors are [M] (completion tokens)."""

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor             # [N, L]: 0 the shared prompt, i ≥ 1 the i-th segment, -1 padding
    target_index: Tensor        # [M]: flat positions in [N·L] whose next token is a completion token
    targets: Tensor             # [M]
    advantages: Tensor          # [M]: the advantage of the target's row
    off_policy: Tensor          # [M] bool

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.position_ids, self.segment,
                                                     self.target_index, self.targets, self.advantages,
                                                     self.off_policy)))


def attention_pair_cost(config) -> float:
    """MACs of one (query, key) pair of attention over one token's linear layers, per decoder layer:
    what a longer pack costs in attention against the tokens it saves."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    d_q = config.num_attention_heads * head_dim
    d_kv = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    h, ff = config.hidden_size, config.intermediate_size
    return 2 * d_q / (h * (d_q + 2 * d_kv) + d_q * h + 3 * h * ff)


def pack_rows(batch: Batch, max_rows: int, pair_cost: float) -> list[Pack]:
    """Rows grouped by identical prompt into packs of at most `max_rows` completions; a completion joins its
    prompt's current pack while that costs less (tokens + pair_cost · causal pairs) than a pack of its own."""
    def cost(n_tokens: int) -> float:
        return n_tokens + pair_cost * n_tokens * (n_tokens + 1) / 2

    open_packs: dict[tuple[int, ...], Pack] = {}
    packs: list[Pack] = []
    for ids, mask, completion, adv, off in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(),
                                               batch.completion_mask.tolist(), batch.advantages.tolist(),
                                               batch.off_policy.tolist()):
        if 1.0 not in completion:   # no completion token: nothing to learn from
            continue
        length, prompt_len = sum(mask), completion.index(1.0) + 1
        prompt, tail = tuple(ids[:prompt_len]), ids[prompt_len:length]
        pack = open_packs.get(prompt)
        if (pack is None or len(pack.completions) >= max_rows
                or cost(len(pack) + 1 + len(tail)) > cost(len(pack)) + cost(length)):
            pack = open_packs[prompt] = Pack(list(prompt), [], [], [])
            packs.append(pack)
        pack.completions.append(tail)
        pack.advantages.append(adv)
        pack.off_policy.append(off)
    return packs


def collate_packs(packs: Sequence[Pack]) -> PackedBatch:
    width = max(len(p) for p in packs)
    n = len(packs)
    input_ids = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    index, targets, advantages, off_policy = [], [], [], []
    for row, pack in enumerate(packs):
        p = len(pack.prompt) - 1
        input_ids[row, :p] = torch.tensor(pack.prompt[:-1], dtype=torch.long)
        position_ids[row, :p] = torch.arange(p)
        segment[row, :p] = 0
        start = p
        for i, (completion, adv, off) in enumerate(zip(pack.completions, pack.advantages, pack.off_policy)):
            tokens = [pack.prompt[-1], *completion]
            end = start + len(tokens)
            input_ids[row, start:end] = torch.tensor(tokens, dtype=torch.long)
            position_ids[row, start:end] = torch.arange(p, p + len(tokens))
            segment[row, start:end] = i + 1
            index += range(row * width + start, row * width + end - 1)   # each predicts the next token
            targets += completion
            advantages += [adv] * len(completion)
            off_policy += [off] * len(completion)
            start = end
    return PackedBatch(input_ids, position_ids, segment, torch.tensor(index, dtype=torch.long),
                       torch.tensor(targets, dtype=torch.long), torch.tensor(advantages, dtype=torch.float32),
                       torch.tensor(off_policy, dtype=torch.bool))


def pack_attention_mask(segment: Tensor, additive_dtype: torch.dtype | None = None) -> Tensor:
    """[N, L] segments → [N, 1, L, L] mask: causal, within the prompt or the query's own segment; padding
    sees itself only (no empty softmax row). Boolean (True = attend), or additive in `additive_dtype`."""
    width = segment.shape[1]
    q, k = segment.unsqueeze(2), segment.unsqueeze(1)                            # [N, L, 1], [N, 1, L]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    diagonal = torch.eye(width, dtype=torch.bool, device=segment.device)
    mask = (causal & (q >= 0) & (k >= 0) & ((k == 0) | (k == q))) | diagonal
    if additive_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=additive_dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(additive_dtype).min)
    return mask.unsqueeze(1)


def completion_logprobs(model, mb: PackedBatch, chunk: int = LOGPROB_CHUNK) -> Tensor:
    """log π of every completion token of the packs: [M] (fp32). Only those positions reach the lm_head."""
    eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
    mask = pack_attention_mask(mb.segment, model.dtype if eager else None)
    hidden = model.model(input_ids=mb.input_ids, attention_mask=mask, position_ids=mb.position_ids).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[mb.target_index]              # [M, H]
    return head_logprobs(model.lm_head, hidden, mb.targets, chunk)


def micro_batches(packs: Sequence[Pack], micro_batch: int) -> list[list[Pack]]:
    """Packs longest first, a micro-batch holding at most `micro_batch` rows (the loss is a sum over rows)."""
    out: list[list[Pack]] = []
    rows = 0
    for pack in sorted(packs, key=len, reverse=True):
        if not out or rows + len(pack.completions) > micro_batch:
            out.append([])
            rows = 0
        out[-1].append(pack)
        rows += len(pack.completions)
    return out


def backward_rows(model, batch: Batch, cfg: TrainConfig, denominator: float, micro_batch: int,
                  ref_logprobs=None, share_prompts: bool = True) -> dict[str, float]:
    """Accumulate ∇ of this batch's share of the loss (summed over tokens / the global denominator).

    Rows with one prompt are packed (`pack_rows`; `share_prompts=False`: a pack per row). `ref_logprobs(mb)
    -> [M]` gives the reference policy's log-probs of a micro-batch's completion tokens when β > 0. Rows
    with A = 0 (zero-variance groups) are skipped when β = 0. Returns the summed loss and KL (already
    divided by the denominator).
    """
    device = next(model.parameters()).device
    if not cfg.beta_kl:   # without the KL term a row with A = 0 adds exactly 0 to the loss and its gradient
        batch = batch.rows(torch.nonzero(batch.advantages != 0).squeeze(1))
    if not len(batch):
        return {"loss": 0.0, "kl": 0.0}
    packs = pack_rows(batch, micro_batch if share_prompts else 1, attention_pair_cost(model.config))
    # every micro-batch on the device first and no sync inside the loop: the GPU never waits on the host
    batches = [collate_packs(group).to(device) for group in micro_batches(packs, micro_batch)]
    loss_sum = kl_sum = torch.zeros((), device=device)
    for mb in batches:
        logp = completion_logprobs(model, mb)                                       # [M]
        per_token = policy_token_loss(logp, logp.detach(), mb.advantages, mb.off_policy, cfg.clip_eps)
        if cfg.beta_kl > 0 and ref_logprobs is not None:
            kl = kl_k3(logp, ref_logprobs(mb))
            per_token = per_token + cfg.beta_kl * kl
            kl_sum = kl_sum + kl.detach().sum() / denominator
        loss = per_token.sum() / denominator
        loss.backward()
        loss_sum = loss_sum + loss.detach()
    return {"loss": float(loss_sum), "kl": float(kl_sum)}
