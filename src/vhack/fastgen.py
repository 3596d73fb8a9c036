"""Fast sampling for HF causal LMs: a static KV cache, one prefill, a decode loop replayed as CUDA graphs.

`generate_fast` samples like transformers `generate` (temperature, top-k, top-p; greedy at
temperature 0; a row stops at its first EOS/stop id and is padded after it) and returns only the
new tokens, [B, max_new_tokens]. Plain `generate` spends most of a decode step launching kernels
from Python and expanding the GQA KV heads; here:
- the KV cache is a transformers StaticCache, so every decode step has the same shapes and
  reads/writes the same buffers, and the step (model forward on [B, 1] + sampling) is captured
  once into a CUDA graph and replayed (CUDA only; elsewhere the same step runs eagerly);
- q/k/v and gate/up run as one GEMM per group on packed weight copies; an adapter is sampled on
  its merged weights W + ΔW (`weights`) instead of through its hooks or LoRA branches;
- decode attention reads each KV head once for its group of query heads (no repeat_kv), and only
  the cache slots in use, rounded up to `kv_bucket` (one graph per bucket);
- rows sampling one prompt (a GRPO group) share it: it is prefilled once, and the fused attention
  reads its cache slots once for all the group's query heads (`SharedPrefix`), then each row's own;
- `fused` (CUDA + Triton): RMSNorm (prefill too), the Qwen3 decode attention input (q/k norm,
  rotary, K/V cache write: one kernel), attention, SiLU·mul and sampling run as Triton kernels
  (the HF code launches ~70 small kernels per layer, which bounds a graph replay); the attention
  kernel reads the current slot from the device, so one graph, captured once, serves every step
  at the exact KV length;
- sampling stays on the device and never syncs: Gumbel-max (argmax of log-probs + Gumbel noise)
  draws exactly from softmax(logits), with noise from a seeded torch.Generator filled in before
  each replay; whether every row has finished is read only every `check_every` steps.
The model must be a decoder whose attention modules read `config._attn_implementation` and accept
a prepared mask dict (transformers 5.x Llama/Qwen-style models).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import math
import sys
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# CPU-only torch builds ship no Triton: the torch paths run instead
HAS_TRITON = importlib.util.find_spec("triton") is not None

ATTENTION_NAME = "vhack_fastgen"
FUSED_ATTENTION_NAME = "vhack_fastgen_triton"
SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' (ACT2FN["silu"])
RMS_NORMS = ("Qwen3RMSNorm", "Qwen2RMSNorm", "LlamaRMSNorm")  # weight * normed(x), HF's formula, fused below


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
    slot: Tensor        # [1] its cache slot
    step: Tensor        # [1] index in `out` of the token being sampled
    key_valid: Tensor   # [B, 1, 1, L] bool: False on the prompt's left padding
    slots: Tensor       # [L] 0..L-1
    finished: Tensor    # [B] bool: the row has emitted a stop id
    out: Tensor         # [B, N] new tokens, pad after a row's stop id
    noise: Tensor       # [B, V] float32 uniforms for this step's draw (unused when greedy)
    stop_ids: Tensor    # [S]
    pad_id: int


@dataclass(frozen=True)
class SharedPrefix:
    """Batch rows whose first `length` cache slots hold one prompt's K/V (a GRPO group's G samples)."""

    members: Tensor  # [M, G] int32: lists of rows of one prompt each, -1 past a list's end
    length: int      # the prompt's slots, [0, length)


# ---------------------------------------------------------------- attention

def grouped_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One query token: q [B, H, 1, D], K/V [B, KV, L, D], mask [B, 1, 1, L] bool -> [B, 1, H, D].

    Each KV head's query heads form the rows of one small matmul, so K and V are read once per KV
    head ([B, KV, G, D] @ [B, KV, D, L]) instead of once per query head as repeat_kv + SDPA does.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    q = query.view(batch, kv_heads, heads // kv_heads, head_dim)  # query head i uses KV head i // G
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [B, KV, G, L]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(value.dtype)
    return torch.matmul(probs, value).reshape(batch, 1, heads, head_dim)


def decode_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor,
                     scaling: float | None = None, dropout: float = 0.0, fused: bool = False,
                     **kwargs) -> tuple[Tensor, None]:
    """Attention over the first `attention_mask.shape[-1]` cache slots (the static cache is longer).

    Several query tokens (prefill) go to transformers' SDPA attention; one (decode) to
    `grouped_attention`, or its Triton kernel when `fused`.
    """
    kv_len = attention_mask.shape[-1]
    scale = scaling or query.shape[-1] ** -0.5
    if query.shape[2] > 1:
        return sdpa_attention_forward(module, query, key[:, :, :kv_len], value[:, :, :kv_len], attention_mask,
                                      dropout=dropout, scaling=scale, **kwargs)
    if fused:
        return triton_ops().triton_grouped_attention(query, key, value, attention_mask, scale,
                                                     kwargs.get("decode_last_slot"), kwargs.get("decode_prefix")), None
    return grouped_attention(query, key[:, :, :kv_len], value[:, :, :kv_len], attention_mask, scale), None


AttentionInterface.register(ATTENTION_NAME, decode_attention)
AttentionInterface.register(FUSED_ATTENTION_NAME, functools.partial(decode_attention, fused=True))


@contextlib.contextmanager
def attention_implementation(model, name: str) -> Iterator[None]:
    """Run `model` with another registered attention function (training keeps its own)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def triton_ops():
    """vhack.fastgen_triton, imported on first use of a fused path."""
    from vhack import fastgen_triton
    return fastgen_triton


def packed(module: nn.Module) -> bool:
    return isinstance(module, Slice)


@contextlib.contextmanager
def fused_ops(model) -> Iterator[None]:
    """Swap Triton kernels into `model` (inside `packed_projections`): RMSNorm (prefill and decode),
    rotary embedding (decode), and where q/k/v and gate/up are packed, the Qwen3-style decode attention
    block and the SiLU MLP."""
    ops = triton_ops()
    norms = [m for m in model.modules() if type(m).__name__ in RMS_NORMS]
    modeling = {sys.modules[type(m).__module__] for m in model.modules()}
    rotary = [mod for mod in modeling if callable(getattr(mod, "apply_rotary_pos_emb", None))]
    originals = [mod.apply_rotary_pos_emb for mod in rotary]
    attentions = [m for m in model.modules() if packed(getattr(m, "q_proj", None)) and hasattr(m, "k_norm")
                  and m.head_dim >= 2 and m.head_dim & (m.head_dim - 1) == 0]   # a power of two
    mlps = [m for m in model.modules() if packed(getattr(m, "gate_proj", None))
            and type(getattr(m, "act_fn", None)).__name__ in SILU]
    try:
        for norm in norms:
            norm.forward = functools.partial(ops.triton_rms_norm, norm)
        for mod, original in zip(rotary, originals):
            mod.apply_rotary_pos_emb = ops.fused_rotary(original)
        for attention in attentions:
            attention.forward = functools.partial(ops.fused_decode_attention, attention, attention.forward)
        for mlp in mlps:
            mlp.forward = functools.partial(ops.fused_mlp, mlp)
        yield
    finally:
        for module in norms + attentions + mlps:
            module.__dict__.pop("forward", None)
        for mod, original in zip(rotary, originals):
            mod.apply_rotary_pos_emb = original


def write_at_slot(layer, slot: Tensor, key_states: Tensor, value_states: Tensor, *args, **kwargs):
    """A StaticLayer update for one token per row at the shared cache slot `slot` [1]."""
    layer.keys.index_copy_(2, slot, key_states)
    layer.values.index_copy_(2, slot, value_states)
    return layer.keys, layer.values


# ---------------------------------------------------------------- packed projections

PACKS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # each group reads the same input


class PackedLinear(nn.Module):
    """One GEMM for a group of projections of the same input: x @ [W_1; W_2; ...]ᵀ, computed once per input.

    The group's modules are swapped for `Slice`s of it; a call with the input the last call saw
    returns its slice of the kept output (HF's attention calls q_proj, k_proj, v_proj on one tensor),
    which is let go once every slice has been taken.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor | None]):
        super().__init__()
        self.weight = torch.cat(list(weights))
        self.bias = None if biases[0] is None else torch.cat(list(biases))
        self.bounds = [0, *itertools.accumulate(w.shape[0] for w in weights)]
        self.last_input: Tensor | None = None
        self.last_output: Tensor | None = None
        self.untaken: set[int] = set()

    def full(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def slice(self, x: Tensor, index: int) -> Tensor:
        if x is not self.last_input or index not in self.untaken:
            self.last_input, self.last_output = x, F.linear(x, self.weight, self.bias)
            self.untaken = set(range(len(self.bounds) - 1))
        out = self.last_output[..., self.bounds[index]:self.bounds[index + 1]]
        self.untaken.discard(index)
        if not self.untaken:
            self.last_input = self.last_output = None
        return out


class Slice(nn.Module):
    def __init__(self, packed: PackedLinear, index: int):
        super().__init__()
        self.packed, self.index = [packed], index  # a list: not registered as a submodule

    def forward(self, x: Tensor) -> Tensor:
        return self.packed[0].slice(x, self.index)


class MergedLinear(nn.Module):
    """A projection on a given weight (an adapter's W + ΔW), bypassing the module's own hooks or LoRA."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def base_linear(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module  # peft LoRA wraps the Linear


def effective_weight(name: str, module: nn.Module, weights: Mapping[str, Tensor]) -> Tensor | None:
    """The weight a projection computes with: given (merged adapter), or a plain hook-free Linear's own."""
    if name in weights:
        return weights[name]
    plain = (type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)
             and "forward" not in vars(module))  # an adapter may replace one module's forward (svd_delta)
    return module.weight if plain else None


@contextlib.contextmanager
def packed_projections(model: nn.Module, weights: Mapping[str, Tensor] | None = None) -> Iterator[None]:
    """Run q/k/v and gate/up as one GEMM per group, and adapted projections on merged weights.

    weights: module name -> the weight that module effectively computes with (an adapter's W + ΔW,
    `Adapter.merged_weights()`); those modules are bypassed, so their hooks or LoRA branches do not
    add the delta again. A module neither given nor a plain Linear keeps running as it is.
    """
    weights = weights or {}
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    parents = [(name, m) for name, m in model.named_modules() if any(hasattr(m, g[0]) for g in PACKS)]
    try:
        for parent_name, parent in parents:
            for group in PACKS:
                modules = [getattr(parent, g, None) for g in group]
                if any(m is None for m in modules):
                    continue
                found = [effective_weight(f"{parent_name}.{g}", m, weights) for g, m in zip(group, modules)]
                if any(w is None for w in found):
                    continue
                packed = PackedLinear(found, [base_linear(m).bias for m in modules])
                for index, (attr, module) in enumerate(zip(group, modules)):
                    swapped.append((parent, attr, module))
                    setattr(parent, attr, Slice(packed, index))
        for name, weight in weights.items():  # the rest of the adapted projections (o_proj, down_proj)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            module = getattr(parent, attr)
            if not isinstance(module, Slice):
                swapped.append((parent, attr, module))
                setattr(parent, attr, MergedLinear(weight, base_linear(module).bias))
        yield
    finally:
        for parent, attr, module in reversed(swapped):
            setattr(parent, attr, module)


# ---------------------------------------------------------------- prefill, sampling, one decode step

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


def emit_tokens(state: DecodeState, logits: Tensor, sampler: Sampler, fused: bool = False) -> None:
    """Sample from logits [B, V], record the tokens (pad for finished rows), advance the step."""
    if fused and not sampler.greedy and sampler.top_k == 0 and sampler.top_p == 1.0:
        tokens = triton_ops().triton_gumbel_argmax(logits, state.noise, sampler.temperature)
    else:
        tokens = sample_tokens(logits.float(), state.noise, sampler)
    tokens = torch.where(state.finished, state.pad_id, tokens)
    state.out.index_copy_(1, state.step, tokens[:, None])
    state.finished |= (tokens[:, None] == state.stop_ids).any(-1)
    state.tokens.copy_(tokens[:, None])
    state.step += 1


def decode_step(model, cache: StaticCache, state: DecodeState, kv_len: int, sampler: Sampler,
                fused: bool = False, prefix: SharedPrefix | None = None) -> None:
    """Feed `state.tokens` at `state.slot`, attend to the cache slots in use, sample the next tokens.

    The mask spans slots [0, kv_len); the Triton attention (`fused`) reads only up to `state.slot`, and
    a shared prompt's slots once per group (`prefix`).
    """
    mask = state.key_valid[..., :kv_len] & (state.slots[:kv_len] <= state.slot)  # [B, 1, 1, kv_len]
    logits = model(input_ids=state.tokens, attention_mask={"full_attention": mask}, position_ids=state.positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1, decode_last_slot=state.slot,
                   decode_prefix=prefix).logits[:, -1]
    emit_tokens(state, logits, sampler, fused)
    state.positions += 1
    state.slot += 1


def kv_length(step: int, prompt_len: int, cache_len: int, kv_bucket: int) -> int:
    """Cache slots decode step `step` (1-based) attends to, rounded up to a bucket: prompt + step."""
    return min(cache_len, prompt_len + kv_bucket * math.ceil(step / kv_bucket))


class StepRunner:
    """Runs decode steps: eagerly, or on CUDA one captured graph per KV length (one in all when fused).

    A bucket's first step runs eagerly (it warms up lazy state: Triton compiles, an adapter's
    zero check), then the step is captured; later steps of the bucket replay the graph. The graphs
    live for one `generate_fast` call: they bake in the Python branches taken at capture (an
    adapter skipping a zero delta), which may change once the weights do.
    """

    def __init__(self, model, cache: StaticCache, state: DecodeState, sampler: Sampler, use_graphs: bool,
                 fused: bool, prefix: SharedPrefix | None = None):
        self.model, self.cache, self.state, self.sampler = model, cache, state, sampler
        self.use_graphs, self.fused, self.prefix = use_graphs, fused, prefix
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def run(self, kv_len: int) -> None:
        graph = self.graphs.get(kv_len)
        if graph is not None:
            graph.replay()
            return
        decode_step(self.model, self.cache, self.state, kv_len, self.sampler, self.fused, self.prefix)
        if self.use_graphs:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                decode_step(self.model, self.cache, self.state, kv_len, self.sampler, self.fused, self.prefix)
            self.graphs[kv_len] = graph


def generate_fast(model, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, temperature: float,
                  top_p: float, eos_ids: Sequence[int], pad_id: int, seed: int, top_k: int = 0,
                  use_graphs: bool | None = None, fused: bool | None = None, kv_bucket: int = 128,
                  check_every: int = 32, weights: Mapping[str, Tensor] | None = None) -> Tensor:
    """New tokens [B, max_new_tokens] for left-padded prompts [B, P]; pad_id after a row's first stop id.

    use_graphs: None = on CUDA. fused: Triton kernels (vhack.fastgen_triton); None = on CUDA when Triton is installed.
    kv_bucket (unfused): decode attends to the used cache slots rounded up to this many (one CUDA graph
    per bucket); the fused attention reads exactly the slots in use. check_every: decode steps between
    the (syncing) checks for every row having finished. weights: an adapter's merged weights
    (`Adapter.merged_weights()`): sampling then runs on W + ΔW, not through the adapter's hooks or LoRA
    branches. q/k/v and gate/up always run as one GEMM per group, on packed copies of their weights.
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate_fast: max_new_tokens={max_new_tokens}, need >= 1")
    device = input_ids.device
    use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
    fused = device.type == "cuda" and HAS_TRITON if fused is None else fused
    sampler = Sampler(temperature, top_p, top_k)
    prompt_len = input_ids.shape[1]
    cache_len = prompt_len + max_new_tokens - 1  # the last token is sampled, never fed back
    generator = torch.Generator(device=device).manual_seed(seed)
    attention = FUSED_ATTENTION_NAME if fused else ATTENTION_NAME
    with (torch.inference_mode(), attention_implementation(model, attention), packed_projections(model, weights),
          fused_ops(model) if fused else contextlib.nullcontext()):
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        state = initial_state(attention_mask, cache_len, max_new_tokens, eos_ids, pad_id, model.config.vocab_size,
                              sampler)
        draw_noise(state, generator, sampler)
        prompts, mask, rows = distinct_prompts(input_ids, attention_mask)   # a group's G rows: one prefill
        logits = model(input_ids=prompts, attention_mask={"full_attention": prefill_mask(mask)},
                       position_ids=prompt_positions(mask), past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        prefix = None
        if len(prompts) < len(input_ids):
            expand_rows(cache, rows)
            logits = logits[rows]
            prefix = shared_prefix(rows, prompt_len, triton_ops().members_per_program(model.config)) if fused else None
        emit_tokens(state, logits, sampler, fused)
        with slot_writes(cache, state.slot):
            runner = StepRunner(model, cache, state, sampler, use_graphs, fused, prefix)
            for step in range(1, max_new_tokens):
                if step % check_every == 0 and bool(state.finished.all()):
                    break
                draw_noise(state, generator, sampler)
                runner.run(cache_len if fused else kv_length(step, prompt_len, cache_len, kv_bucket))
    return state.out


def distinct_prompts(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of a batch of prompts [U, P] (ids and mask), and each row's index among them [B]
    (all distinct: the batch as it is)."""
    width = input_ids.shape[1]
    distinct, rows = torch.unique(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1), dim=0,
                                  return_inverse=True)
    if len(distinct) == len(input_ids):
        return input_ids, attention_mask, torch.arange(len(input_ids), device=input_ids.device)
    return distinct[:, :width], distinct[:, width:], rows


def expand_rows(cache: StaticCache, rows: Tensor) -> None:
    """Prefilled K/V of the distinct prompts [U, H, L, D] -> one row per batch row [B, H, L, D]."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
        layer.batch_size = len(rows)


def shared_prefix(rows: Tensor, length: int, per_program: int) -> SharedPrefix:
    """Each distinct prompt's batch rows, from each row's prompt index `rows` [B] (`distinct_prompts`),
    in lists of at most `per_program` (a larger group takes several)."""
    counts = torch.bincount(rows)
    order = torch.argsort(rows, stable=True)                    # rows grouped by prompt
    prompt = rows[order]
    rank = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[prompt]
    lists = (counts + per_program - 1) // per_program            # lists per prompt (width <= per_program)
    first_list = lists.cumsum(0) - lists
    width = min(per_program, int(counts.max()))
    members = torch.full((int(lists.sum()), width), -1, dtype=torch.int32, device=rows.device)
    members[first_list[prompt] + rank // width, rank % width] = order.to(torch.int32)
    return SharedPrefix(members, length)


@contextlib.contextmanager
def slot_writes(cache: StaticCache, slot: Tensor) -> Iterator[None]:
    """Decode writes one slot per step, shared by all layers (the prefill allocated them).

    The hooks go on exit: each refers back to its layer, a cycle that kept every call's KV cache
    (9.6 GB for 32 rows x 2,048 slots of Qwen3-4B) alive until the garbage collector happened to run.
    """
    try:
        for layer in cache.layers:
            layer.update = functools.partial(write_at_slot, layer, slot)
        yield
    finally:
        for layer in cache.layers:
            layer.__dict__.pop("update", None)


def initial_state(attention_mask: Tensor, cache_len: int, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
                  vocab_size: int, sampler: Sampler) -> DecodeState:
    batch, prompt_len = attention_mask.shape
    device = attention_mask.device
    key_valid = torch.ones(batch, 1, 1, cache_len, dtype=torch.bool, device=device)
    key_valid[:, 0, 0, :prompt_len] = attention_mask.bool()
    return DecodeState(
        tokens=torch.full((batch, 1), pad_id, dtype=torch.long, device=device),
        positions=attention_mask.long().sum(-1, keepdim=True),  # the first new token follows the prompt
        slot=torch.tensor([prompt_len], device=device),
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
