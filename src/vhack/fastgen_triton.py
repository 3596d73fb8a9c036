"""The Triton kernels of vhack.fastgen (CUDA): RMSNorm, the Qwen3 decode attention input (q/k norm,
rotary, cache write), flash-decoding attention, SiLU·mul and Gumbel-max sampling.

Imported only when fastgen runs fused (CUDA with Triton installed): importing vhack.fastgen or
vhack.rollout compiles and registers nothing here.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from vhack.fastgen import SharedPrefix

ATTENTION = {"block": 64, "depth": 2, "num_warps": 2, "num_stages": 2}  # tuned by benchmarks/attention_sweep.py (H100)
SHARED_QUERY_ROWS = 16  # query rows (rows x query heads of a KV head) per shared-prompt program: tl.dot's minimum


@triton.jit
def _rms_norm_kernel(X, W, Y, outer_stride, head_stride, heads, n, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # rows of x [outer, heads, n] (strided), of Y contiguous
    cols = tl.arange(0, BLOCK)
    keep = cols < n
    x_row = X + (row // heads) * outer_stride + (row % heads) * head_stride
    x = tl.load(x_row + cols, mask=keep, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
    normed = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # HF rounds to the input dtype, then scales
    w = tl.load(W + cols, mask=keep, other=0.0).to(tl.float32)
    tl.store(Y + row * n + cols, (w * normed).to(Y.dtype.element_ty), mask=keep)

@triton.jit
def _rope_kernel(X, Cos, Sin, Y, x_stride_b, x_stride_h, cs_stride_b, heads, HALF: tl.constexpr):
    row = tl.program_id(0)  # b * heads + h; one token per row
    b = row // heads
    d = tl.arange(0, HALF)
    x_row = X + b * x_stride_b + (row % heads) * x_stride_h
    x1 = tl.load(x_row + d).to(tl.float32)
    x2 = tl.load(x_row + HALF + d).to(tl.float32)
    c1 = tl.load(Cos + b * cs_stride_b + d).to(tl.float32)
    c2 = tl.load(Cos + b * cs_stride_b + HALF + d).to(tl.float32)
    s1 = tl.load(Sin + b * cs_stride_b + d).to(tl.float32)
    s2 = tl.load(Sin + b * cs_stride_b + HALF + d).to(tl.float32)
    dt = Y.dtype.element_ty  # HF: x*cos and rotate_half(x)*sin are each rounded, then summed
    first = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
    second = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    tl.store(Y + row * 2 * HALF + d, first.to(dt))
    tl.store(Y + row * 2 * HALF + HALF + d, second.to(dt))

@triton.jit
def _attention_split_kernel(Q, K, V, Mask, LastSlot, Members, Part, Stats, scale, groups, prefix_len, suffix_base,
                            parts, q_sb, q_sh, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, m_sb,
                            GROUP: tl.constexpr, MEMBERS: tl.constexpr, ROWS: tl.constexpr, PAD: tl.constexpr,
                            D: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """Flash-decoding: program (p, kv head, split) attends query heads to one chunk of cache slots.

    p < groups: the slots [0, prefix_len) of a prompt shared by the rows Members[p] (-1 pads), for the GROUP
    query heads of every member at once (its K/V read once for the group); else row p - groups over its
    own slots [prefix_len, *LastSlot] (read from the device: one CUDA graph serves every step).
    Writes each query head's partial (acc, max, sum) to Part/Stats [B, KV, parts, PAD].
    """
    p = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    shared = p < groups
    rows = tl.arange(0, ROWS)  # member * GROUP + query head, padded to ROWS >= 16 for tl.dot
    member = rows // GROUP
    listing = Members + tl.where(shared, p, 0) * MEMBERS
    listed = tl.load(listing + member, mask=member < MEMBERS, other=-1)
    batch_row = tl.where(shared, listed, tl.where(member == 0, p - groups, -1))  # [ROWS]; -1: unused row
    key_row = tl.where(shared, tl.load(listing), p - groups)
    lo = tl.where(shared, 0, prefix_len)
    hi = tl.where(shared, prefix_len, tl.load(LastSlot) + 1)
    used = batch_row >= 0
    dims = tl.arange(0, D)
    head = h * GROUP + rows % GROUP
    q = tl.load(Q + batch_row[:, None] * q_sb + head[:, None] * q_sh + dims[None, :], mask=used[:, None], other=0.0)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, D], tl.float32)
    k_base = K + key_row * k_sb + h * k_sh
    v_base = V + key_row * v_sb + h * v_sh
    chunk = tl.cdiv(tl.cdiv(hi - lo, tl.num_programs(2)), BLOCK) * BLOCK
    start = lo + s * chunk
    stop = tl.minimum(start + chunk, hi)
    for first in range(start, stop, BLOCK):  # a split starting past hi loads nothing
        cols = first + tl.arange(0, BLOCK)
        inside = cols < stop
        keep = tl.load(Mask + key_row * m_sb + cols, mask=inside, other=0) != 0
        k = tl.load(k_base + cols[:, None] * k_sl + dims[None, :], mask=inside[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [ROWS, BLOCK]
        scores = tl.where(keep[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: exp(-inf) = 0, no NaN
        alpha = tl.exp(m_i - m_ref)
        probs = tl.exp(scores - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(probs, axis=1)
        v = tl.load(v_base + cols[:, None] * v_sl + dims[None, :], mask=inside[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    part = tl.where(shared, 0, suffix_base) + s
    out = ((batch_row * tl.num_programs(1) + h) * parts + part) * PAD + rows % GROUP
    tl.store(Part + out[:, None] * D + dims[None, :], acc, mask=used[:, None])
    tl.store(Stats + out * 2, m_i, mask=used)
    tl.store(Stats + out * 2 + 1, l_i, mask=used)

@triton.jit
def _attention_merge_kernel(Part, Stats, Out, parts, o_sb,
                            GROUP: tl.constexpr, PAD: tl.constexpr, D: tl.constexpr):
    """Combine the partials of program (b, kv head): softmax-weighted by each one's running max."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    rows = tl.arange(0, PAD)
    dims = tl.arange(0, D)
    first = (b * tl.num_programs(1) + h) * parts
    m_max = tl.full([PAD], float("-inf"), tl.float32)
    for s in range(0, parts):
        m_max = tl.maximum(m_max, tl.load(Stats + ((first + s) * PAD + rows) * 2))
    acc = tl.zeros([PAD, D], tl.float32)
    total = tl.zeros([PAD], tl.float32)
    for s in range(0, parts):
        idx = (first + s) * PAD + rows
        weight = tl.exp(tl.load(Stats + idx * 2) - m_max)  # an empty split has max -inf: weight 0
        total += weight * tl.load(Stats + idx * 2 + 1)
        acc += weight[:, None] * tl.load(Part + idx[:, None] * D + dims[None, :])
    tl.store(Out + b * o_sb + (h * GROUP + rows)[:, None] * D + dims[None, :],
             (acc / total[:, None]).to(Out.dtype.element_ty), mask=(rows < GROUP)[:, None])


@triton.jit
def _gumbel_argmax_kernel(Logits, Noise, Best, BestIdx, n, chunk, l_stride, n_stride, temperature, tiny,
                          BLOCK: tl.constexpr):
    """Program (row, split): argmax of logits / T + Gumbel(noise) over one chunk, first index on ties."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    best = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int64)
    for start in range(split * chunk, tl.minimum(split * chunk + chunk, n), BLOCK):
        cols = start + tl.arange(0, BLOCK)
        keep = cols < n
        x = tl.load(Logits + row * l_stride + cols, mask=keep, other=0.0).to(tl.float32)
        u = tl.maximum(tl.load(Noise + row * n_stride + cols, mask=keep, other=0.5), tiny)
        score = tl.where(keep, x / temperature - tl.log(-tl.log(u)), float("-inf"))
        block_best = tl.max(score, axis=0)
        block_idx = tl.argmax(score, axis=0, tie_break_left=True).to(tl.int64) + start
        better = block_best > best
        best_idx = tl.where(better, block_idx, best_idx)
        best = tl.where(better, block_best, best)
    tl.store(Best + row * tl.num_programs(1) + split, best)
    tl.store(BestIdx + row * tl.num_programs(1) + split, best_idx)

@triton.jit
def _argmax_merge_kernel(Best, BestIdx, Out, SPLITS: tl.constexpr):
    """Per row: the index of the first split holding the largest score."""
    row = tl.program_id(0)
    splits = tl.arange(0, SPLITS)
    winner = tl.argmax(tl.load(Best + row * SPLITS + splits), axis=0, tie_break_left=True)
    tl.store(Out + row, tl.load(BestIdx + row * SPLITS + winner))


@triton.jit
def _norm_rope_store_kernel(QKV, Wq, Wk, Cos, Sin, LastSlot, Q, KCache, VCache, qkv_stride, cs_stride,
                            kc_sb, kc_sh, kc_sl, vc_sb, vc_sh, vc_sl, eps,
                            HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr):
    """Program (b, h) of one decode token: q head h, or k/v head h - HEADS, from packed q|k|v.

    q and k: RMSNorm over the head (HF rounding), then rotary (HF rounding); q goes to Q [B, HEADS, D],
    k and v go straight into the cache at slot *LastSlot.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.arange(0, HALF)
    dt = Q.dtype.element_ty
    row = QKV + b * qkv_stride + h * 2 * HALF
    x1 = tl.load(row + d).to(tl.float32)
    x2 = tl.load(row + HALF + d).to(tl.float32)
    is_q = h < HEADS
    w = tl.where(is_q, Wq, Wk)  # same dtype and length: pick the head's norm weight
    w1 = tl.load(w + d).to(tl.float32)
    w2 = tl.load(w + HALF + d).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
    n1 = (w1 * (x1 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    n2 = (w2 * (x2 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    c1 = tl.load(Cos + b * cs_stride + d).to(tl.float32)
    c2 = tl.load(Cos + b * cs_stride + HALF + d).to(tl.float32)
    s1 = tl.load(Sin + b * cs_stride + d).to(tl.float32)
    s2 = tl.load(Sin + b * cs_stride + HALF + d).to(tl.float32)
    first = ((n1 * c1).to(dt).to(tl.float32) + (-n2 * s1).to(dt).to(tl.float32)).to(dt)
    second = ((n2 * c2).to(dt).to(tl.float32) + (n1 * s2).to(dt).to(tl.float32)).to(dt)
    if is_q:
        out = Q + (b * HEADS + h) * 2 * HALF
        tl.store(out + d, first)
        tl.store(out + HALF + d, second)
    else:
        kv = h - HEADS
        slot = tl.load(LastSlot)
        k_out = KCache + b * kc_sb + kv * kc_sh + slot * kc_sl
        tl.store(k_out + d, first)
        tl.store(k_out + HALF + d, second)
        v_row = QKV + b * qkv_stride + (HEADS + KV_HEADS + kv) * 2 * HALF
        v_out = VCache + b * vc_sb + kv * vc_sh + slot * vc_sl
        tl.store(v_out + d, tl.load(v_row + d))
        tl.store(v_out + HALF + d, tl.load(v_row + HALF + d))

@triton.jit
def _silu_mul_kernel(GU, Out, n, gu_stride, BLOCK: tl.constexpr):
    """Rows of packed gate|up [R, 2n] -> silu(gate) * up [R, n], each op rounded as in HF's MLP."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < n
    gate = tl.load(GU + row * gu_stride + cols, mask=keep, other=0.0).to(tl.float32)
    up = tl.load(GU + row * gu_stride + n + cols, mask=keep, other=0.0).to(tl.float32)
    dt = Out.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
    tl.store(Out + row * n + cols, (act * up).to(dt), mask=keep)


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The GPU's SMs; Triton's CPU interpreter (TRITON_INTERPRET=1, CPU tensors) gets a few."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def members_per_program(config) -> int:
    """Rows of one prompt whose query heads a shared-prompt attention program takes at once."""
    return max(1, SHARED_QUERY_ROWS // (config.num_attention_heads // config.num_key_value_heads))


def triton_grouped_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, scale: float,
                             last_slot: Tensor | None = None, prefix: SharedPrefix | None = None) -> Tensor:
    """`grouped_attention` as two Triton kernels over K/V slots [0, last_slot] of the full cache.

    last_slot: a device tensor [1] (read by the kernel, so a captured graph follows it); None = the
    mask's last slot. The mask must cover at least last_slot + 1 slots. prefix: rows whose first
    slots hold one prompt; those slots are read from the group's first row, once for the group.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads, max_len = key.shape[1], mask.shape[-1]
    if last_slot is None:
        last_slot = torch.tensor([max_len - 1], device=query.device)
    group = heads // kv_heads
    members = prefix.members if prefix is not None else torch.zeros(1, 1, dtype=torch.int32, device=query.device)
    groups, width = (members.shape[0], members.shape[1]) if prefix is not None else (0, 1)
    prefix_len = prefix.length if prefix is not None else 0
    rows = max(16, triton.next_power_of_2(group * width))
    pad = triton.next_power_of_2(group)
    # enough programs to fill the GPU `depth` deep; each split covers whole blocks of its slots
    block = ATTENTION["block"]
    programs = (groups + batch) * kv_heads
    splits = max(1, min(triton.cdiv(max_len, block), triton.cdiv(ATTENTION["depth"] * multiprocessors(query.device),
                                                                  programs)))
    parts = 2 * splits if prefix is not None else splits
    part = torch.empty(batch * kv_heads * parts * pad, head_dim, device=query.device, dtype=torch.float32)
    stats = torch.empty(batch * kv_heads * parts * pad, 2, device=query.device, dtype=torch.float32)
    out = torch.empty(batch, 1, heads, head_dim, device=query.device, dtype=query.dtype)
    flat_mask = mask.reshape(batch, max_len).view(torch.uint8)
    precision = "ieee" if query.dtype == torch.float32 else "tf32"  # fp32 inputs: no TF32 rounding
    _attention_split_kernel[(groups + batch, kv_heads, splits)](
        query, key, value, flat_mask, last_slot, members, part, stats, scale, groups, prefix_len,
        parts - splits, parts, query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), flat_mask.stride(0),
        GROUP=group, MEMBERS=width, ROWS=rows, PAD=pad, D=head_dim, BLOCK=block, PRECISION=precision,
        num_warps=ATTENTION["num_warps"], num_stages=ATTENTION["num_stages"])
    _attention_merge_kernel[(batch, kv_heads)](part, stats, out, parts, out.stride(0), GROUP=group, PAD=pad,
                                               D=head_dim)
    return out


def triton_gumbel_argmax(logits: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """`sample_tokens` without top-k/top-p as one kernel: logits [B, V] (any float dtype) -> tokens [B]."""
    batch, vocab = logits.shape
    block, splits = 2048, 16  # B x 16 programs fill the GPU; a row's splits are merged by a second kernel
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    best = torch.empty(batch, splits, dtype=torch.float32, device=logits.device)
    best_idx = torch.empty(batch, splits, dtype=torch.long, device=logits.device)
    _gumbel_argmax_kernel[(batch, splits)](logits, noise, best, best_idx, vocab, chunk, logits.stride(0),
                                           noise.stride(0), temperature, torch.finfo(noise.dtype).tiny, BLOCK=block)
    out = torch.empty(batch, dtype=torch.long, device=logits.device)
    _argmax_merge_kernel[(batch,)](best, best_idx, out, SPLITS=splits)
    return out


def triton_rms_norm(norm: torch.nn.Module, hidden: Tensor) -> Tensor:
    """HF RMSNorm (weight * (x / rms(x)) rounded to x's dtype) as one kernel over the rows of x.

    x [..., n] may be a strided view, e.g. per-head rows [B, T, H, D] of a packed projection.
    """
    n = hidden.shape[-1]
    rows = hidden.unsqueeze(0) if hidden.dim() == 2 else hidden  # [..., heads, n]
    outer = rows.flatten(0, -3)  # a view for contiguous x and for a slice of packed q/k/v
    out = torch.empty(hidden.shape, device=hidden.device, dtype=torch.promote_types(norm.weight.dtype, hidden.dtype))
    heads = outer.shape[1]
    _rms_norm_kernel[(outer.shape[0] * heads,)](outer, norm.weight, out, outer.stride(0), outer.stride(1), heads, n,
                                                norm.variance_epsilon, BLOCK=triton.next_power_of_2(n))
    return out


def triton_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, 1, D] (any strides, unit last) rotated by cos/sin [B, 1, D] -> contiguous [B, H, 1, D]."""
    batch, heads, _, head_dim = x.shape
    out = torch.empty(batch, heads, 1, head_dim, device=x.device, dtype=x.dtype)
    _rope_kernel[(batch * heads,)](x, cos, sin, out, x.stride(0), x.stride(1), cos.stride(0), heads,
                                   HALF=head_dim // 2)
    return out


def triton_silu_mul(gate_up: Tensor) -> Tensor:
    """[..., 2n] packed gate|up (contiguous rows) -> silu(gate) * up [..., n]."""
    n = gate_up.shape[-1] // 2
    rows = gate_up.reshape(-1, 2 * n)
    out = torch.empty(*gate_up.shape[:-1], n, device=gate_up.device, dtype=gate_up.dtype)
    block = 1024
    _silu_mul_kernel[(rows.shape[0], triton.cdiv(n, block))](rows, out, n, rows.stride(0), BLOCK=block)
    return out


def fused_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """A gated SiLU MLP on packed gate|up: down(silu(gate) * up) in two GEMMs and one kernel."""
    return mlp.down_proj(triton_silu_mul(mlp.gate_proj.packed[0].full(x)))


def fused_decode_attention(attention: nn.Module, original: Callable, hidden_states: Tensor,
                           position_embeddings: tuple[Tensor, Tensor], attention_mask: Tensor, past_key_values=None,
                           decode_last_slot: Tensor | None = None, decode_prefix: SharedPrefix | None = None,
                           **kwargs) -> tuple[Tensor, None]:
    """A Qwen3-style attention block for one decode token per row, as four kernels: packed q/k/v GEMM,
    norm + rotary + cache write, attention, o_proj. Other calls (prefill) go to `original`."""
    if hidden_states.shape[1] != 1 or decode_last_slot is None:
        return original(hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
    batch = hidden_states.shape[0]
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    head_dim = attention.head_dim
    qkv = attention.q_proj.packed[0].full(hidden_states).view(batch, -1)  # [B, (H + 2 KV) D]
    cos, sin = position_embeddings  # [B, 1, D]
    layer = past_key_values.layers[attention.layer_idx]
    keys, values = layer.keys, layer.values  # [B, KV, L, D]
    query = torch.empty(batch, heads, 1, head_dim, device=qkv.device, dtype=qkv.dtype)
    _norm_rope_store_kernel[(batch, heads + kv_heads)](
        qkv, attention.q_norm.weight, attention.k_norm.weight, cos, sin, decode_last_slot, query, keys, values,
        qkv.stride(0), cos.stride(0), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), attention.q_norm.variance_epsilon,
        HEADS=heads, KV_HEADS=kv_heads, HALF=head_dim // 2)
    out = triton_grouped_attention(query, keys, values, attention_mask, attention.scaling, decode_last_slot,
                                   decode_prefix)
    return attention.o_proj(out.reshape(batch, 1, heads * head_dim)), None


def fused_rotary(original: Callable) -> Callable:
    """apply_rotary_pos_emb for one decode token per row; other calls go to `original`."""
    @functools.wraps(original)
    def apply(q, k, cos, sin, unsqueeze_dim=1):
        if q.shape[2] != 1 or unsqueeze_dim != 1:
            return original(q, k, cos, sin, unsqueeze_dim)
        return triton_rope(q, cos, sin), triton_rope(k, cos, sin)
    return apply
