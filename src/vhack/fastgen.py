"""Fast sampling for HF causal LMs: a static KV cache, one prefill, a decode loop replayed as CUDA graphs.

`generate_fast` samples like transformers `generate` (temperature, top-k, top-p; greedy at
temperature 0; a row stops at its first EOS/stop id and is padded after it) and returns only the
new tokens, [B, max_new_tokens]. Plain `generate` spends most of a decode step launching kernels
from Python and expanding the GQA KV heads; here:
- the KV cache is a transformers StaticCache, so every decode step has the same shapes and
  reads/writes the same buffers, and the step (model forward on [B, 1] + sampling) is captured
  once into a CUDA graph and replayed (CUDA only; elsewhere the same step runs eagerly);
- decode attention reads each KV head once for its group of query heads (no repeat_kv), and only
  the cache slots in use, rounded up to `kv_bucket` (one graph per bucket);
- sampling stays on the device and never syncs: Gumbel-max (argmax of log-probs + Gumbel noise)
  draws exactly from softmax(logits), with noise from a seeded torch.Generator filled in before
  each replay; whether every row has finished is read only every `check_every` steps.
The model must be a decoder whose attention modules read `config._attn_implementation` and accept
a prepared mask dict (transformers 5.x Llama/Qwen-style models).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor
from transformers import AttentionInterface, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_NAME = "vhack_fastgen"


@dataclass(frozen=True)
class Sampler:
    temperature: float  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class DecodeState:
    """The static buffers a decode step reads and updates in place (a CUDA graph replays on them)."""

    tokens: Tensor      # [B, 1] the token to feed next
    positions: Tensor   # [B, 1] its rotary position (prompt padding excluded)
    slot: Tensor        # [] its cache slot
    step: Tensor        # [1] index in `out` of the token being sampled
    key_valid: Tensor   # [B, 1, 1, L] bool: False on the prompt's left padding
    slots: Tensor       # [L] 0..L-1
    finished: Tensor    # [B] bool: the row has emitted a stop id
    out: Tensor         # [B, N] new tokens, pad after a row's stop id
    noise: Tensor       # [B, V] float32 uniforms for this step's draw (unused when greedy)
    stop_ids: Tensor    # [S]
    pad_id: int


def grouped_decode_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor,
                             scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """Attention over the first `attention_mask.shape[-1]` cache slots (the static cache is longer).

    Decode (one query token): each KV head's query heads form the rows of one small matmul, so
    K and V are read once per KV head ([B, KV, G, D] @ [B, KV, D, L]), unlike repeat_kv + SDPA.
    Prefill (several query tokens) goes to transformers' SDPA attention.
    """
    kv_len = attention_mask.shape[-1]
    key, value = key[:, :, :kv_len], value[:, :, :kv_len]
    if query.shape[2] > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    q = query.view(batch, kv_heads, heads // kv_heads, head_dim)  # query head i uses KV head i // G
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (scaling or head_dim ** -0.5)  # [B, KV, G, L]
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # mask [B, 1, 1, L] broadcasts
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, KV, G, D]
    return out.reshape(batch, 1, heads, head_dim), None  # [B, q=1, H, D], as sdpa_attention_forward returns


AttentionInterface.register(ATTENTION_NAME, grouped_decode_attention)


@contextlib.contextmanager
def attention_implementation(model, name: str) -> Iterator[None]:
    """Run `model` with another registered attention function (training keeps its own)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def prefill_mask(attention_mask: Tensor) -> Tensor:
    """[B, P] 0/1 padding mask -> [B, 1, P, P] bool causal mask.

    A padding query attends to itself only: a fully masked row would give NaN K/V at padding
    slots, and 0 · NaN poisons every later step's attention even where masked.
    """
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    mask = causal & attention_mask.bool()[:, None, None, :]
    return mask | torch.eye(length, dtype=torch.bool, device=attention_mask.device)


def prompt_positions(attention_mask: Tensor) -> Tensor:
    """Rotary positions of a left-padded prompt, as `generate` computes them (padding at 1)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def filter_logits(logits: Tensor, sampler: Sampler) -> Tensor:
    """Temperature, then top-k, then top-p, as transformers' logits warpers apply them."""
    logits = logits / sampler.temperature
    if sampler.top_k > 0:
        kth_best = torch.topk(logits, min(sampler.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if sampler.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - sampler.top_p
        drop_sorted[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_tokens(logits: Tensor, noise: Tensor, sampler: Sampler) -> Tensor:
    """logits [B, V] float32 -> tokens [B]; Gumbel-max on `noise` (uniform [0, 1)) unless greedy."""
    if sampler.greedy:
        return logits.argmax(dim=-1)
    # torch.rand yields exact 0.0 with probability 2^-24 per element (often, over B x V): clamp it
    gumbel = -torch.log(-torch.log(noise.clamp_min(torch.finfo(noise.dtype).tiny)))
    return (filter_logits(logits, sampler) + gumbel).argmax(dim=-1)


def emit_tokens(state: DecodeState, logits: Tensor, sampler: Sampler) -> None:
    """Sample from logits [B, V], record the tokens (pad for finished rows), advance the step."""
    tokens = sample_tokens(logits.float(), state.noise, sampler)
    tokens = torch.where(state.finished, state.pad_id, tokens)
    state.out.index_copy_(1, state.step, tokens[:, None])
    state.finished |= (tokens[:, None] == state.stop_ids).any(-1)
    state.tokens.copy_(tokens[:, None])
    state.step += 1


def decode_step(model, cache: StaticCache, state: DecodeState, kv_len: int, sampler: Sampler) -> None:
    """Feed `state.tokens` at `state.slot`, attend to cache slots [0, kv_len), sample the next tokens."""
    mask = state.key_valid[..., :kv_len] & (state.slots[:kv_len] <= state.slot)  # [B, 1, 1, kv_len]
    logits = model(input_ids=state.tokens, attention_mask={"full_attention": mask}, position_ids=state.positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    emit_tokens(state, logits, sampler)
    state.positions += 1
    state.slot += 1


def kv_length(step: int, prompt_len: int, cache_len: int, kv_bucket: int) -> int:
    """Cache slots decode step `step` (1-based) attends to, rounded up to a bucket: prompt + step."""
    return min(cache_len, prompt_len + kv_bucket * math.ceil(step / kv_bucket))


class StepRunner:
    """Runs decode steps: eagerly, or on CUDA one captured graph per KV bucket.

    A bucket's first step runs eagerly (it warms up lazy state such as an adapter's zero check),
    then the step is captured; later steps of the bucket replay the graph. The graphs live for
    one `generate_fast` call: they bake in the Python branches taken at capture (an adapter
    skipping a zero delta), which may change once the weights do.
    """

    def __init__(self, model, cache: StaticCache, state: DecodeState, sampler: Sampler, use_graphs: bool):
        self.model, self.cache, self.state, self.sampler = model, cache, state, sampler
        self.use_graphs = use_graphs
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def run(self, kv_len: int) -> None:
        graph = self.graphs.get(kv_len)
        if graph is not None:
            graph.replay()
            return
        decode_step(self.model, self.cache, self.state, kv_len, self.sampler)
        if self.use_graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                decode_step(self.model, self.cache, self.state, kv_len, self.sampler)  # recorded, not run
            self.graphs[kv_len] = graph


def generate_fast(model, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
                  top_p: float, eos_ids: Sequence[int], pad_id: int, seed: int, top_k: int = 0,
                  use_graphs: bool | None = None, kv_bucket: int = 128, check_every: int = 32) -> Tensor:
    """New tokens [B, max_new_tokens] for left-padded prompts [B, P]; pad_id after a row's first stop id.

    use_graphs: None = on CUDA. kv_bucket: decode attends to the used cache slots rounded up to
    this many (one CUDA graph per bucket). check_every: decode steps between the (syncing) checks
    for every row having finished.
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate_fast: max_new_tokens={max_new_tokens}, need >= 1")
    device = input_ids.device
    use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
    sampler = Sampler(temperature, top_p, top_k)
    batch, prompt_len = input_ids.shape
    cache_len = prompt_len + max_new_tokens - 1  # the last token is sampled, never fed back
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode(), attention_implementation(model, ATTENTION_NAME):
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        state = initial_state(attention_mask, cache_len, max_new_tokens, eos_ids, pad_id, model.config.vocab_size,
                              sampler)
        draw_noise(state, generator, sampler)
        logits = model(input_ids=input_ids, attention_mask={"full_attention": prefill_mask(attention_mask)},
                       position_ids=prompt_positions(attention_mask), past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        emit_tokens(state, logits, sampler)
        runner = StepRunner(model, cache, state, sampler, use_graphs)
        for step in range(1, max_new_tokens):
            if step % check_every == 0 and bool(state.finished.all()):
                break
            draw_noise(state, generator, sampler)
            runner.run(kv_length(step, prompt_len, cache_len, kv_bucket))
    return state.out


def initial_state(attention_mask: Tensor, cache_len: int, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
                  vocab_size: int, sampler: Sampler) -> DecodeState:
    batch, prompt_len = attention_mask.shape
    device = attention_mask.device
    key_valid = torch.ones(batch, 1, 1, cache_len, dtype=torch.bool, device=device)
    key_valid[:, 0, 0, :prompt_len] = attention_mask.bool()
    return DecodeState(
        tokens=torch.full((batch, 1), pad_id, dtype=torch.long, device=device),
        positions=attention_mask.long().sum(-1, keepdim=True),  # the first new token follows the prompt
        slot=torch.tensor(prompt_len, device=device),
        step=torch.zeros(1, dtype=torch.long, device=device),
        key_valid=key_valid,
        slots=torch.arange(cache_len, device=device),
        finished=torch.zeros(batch, dtype=torch.bool, device=device),
        out=torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device),
        noise=torch.empty((batch, vocab_size) if not sampler.greedy else (0,), device=device),
        stop_ids=torch.tensor(list(eos_ids), dtype=torch.long, device=device),
        pad_id=pad_id,
    )


def draw_noise(state: DecodeState, generator: torch.Generator, sampler: Sampler) -> None:
    if not sampler.greedy:
        state.noise.uniform_(0.0, 1.0, generator=generator)
