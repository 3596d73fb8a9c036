"""The Triton kernels of vhack.train_kernels, each a forward and a backward wrapped in an autograd.Function.

`rnd` marks a rounding to the input dtype where HF's eager op rounds; everything else is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor, nn


@triton.jit
def _rnd(x, like):
    return x.to(like.dtype.element_ty).to(tl.float32)


@triton.jit
def _block(P, first, N, n, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Rows first..first+ROWS of a contiguous [N, n] tensor as fp32 [ROWS, BLOCK] (zero outside) and their offsets."""
    at = (first + tl.arange(0, ROWS))[:, None] * n + tl.arange(0, BLOCK)[None, :]
    keep = ((first + tl.arange(0, ROWS)) < N)[:, None] & (tl.arange(0, BLOCK) < n)[None, :]
    return tl.load(P + at, mask=keep, other=0.0).to(tl.float32), at, keep


@triton.jit
def _rms_norm_fwd(X, W, Y, Rstd, N, n, eps, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    first = tl.program_id(0).to(tl.int64) * ROWS
    x, at, keep = _block(X, first, N, n, ROWS, BLOCK)
    w, _, _ = _block(W, 0, 1, n, 1, BLOCK)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n + eps)                          # [ROWS]
    tl.store(Y + at, (w * _rnd(x * rstd[:, None], X)).to(Y.dtype.element_ty), mask=keep)
    tl.store(Rstd + first + tl.arange(0, ROWS), rstd, mask=(first + tl.arange(0, ROWS)) < N)


@triton.jit
def _rms_norm_bwd(X, W, G, Rstd, DX, N, n, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """y = w · rnd(x̂), x̂ = x · rstd: dx = rstd · (ĝ − x̂ · mean(ĝ · x̂)) with ĝ = rnd(g · w)."""
    first = tl.program_id(0).to(tl.int64) * ROWS
    x, at, keep = _block(X, first, N, n, ROWS, BLOCK)
    g, _, _ = _block(G, first, N, n, ROWS, BLOCK)
    w, _, _ = _block(W, 0, 1, n, 1, BLOCK)
    rstd = tl.load(Rstd + first + tl.arange(0, ROWS), mask=(first + tl.arange(0, ROWS)) < N, other=0.0)[:, None]
    x_hat = x * rstd
    g_hat = _rnd(g * w, X)
    dx = rstd * (g_hat - x_hat * (tl.sum(g_hat * x_hat, axis=1) / n)[:, None])
    tl.store(DX + at, dx.to(DX.dtype.element_ty), mask=keep)


def _rms_grid(rows: Tensor) -> tuple[tuple[int], int, int]:
    """Programs, rows per program and block width: ~4,096 elements a program (many short per-head rows)."""
    block = triton.next_power_of_2(rows.shape[1])
    per_program = max(1, 4096 // block)
    return (triton.cdiv(rows.shape[0], per_program),), per_program, block


class RMSNormFunction(torch.autograd.Function):
    """x [..., n] -> weight · rnd(x / rms(x)), HF's Qwen3/Llama RMSNorm."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        n = x.shape[-1]
        rows = x.reshape(-1, n).contiguous()                                 # [N, n]
        y = torch.empty(rows.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
        rstd = torch.empty(rows.shape[0], device=x.device, dtype=torch.float32)
        grid, per_program, block = _rms_grid(rows)
        _rms_norm_fwd[grid](rows, weight, y, rstd, rows.shape[0], n, eps, ROWS=per_program, BLOCK=block)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, weight, rstd = ctx.saved_tensors
        g = grad.reshape(rows.shape).contiguous()
        dx = torch.empty_like(rows)
        grid, per_program, block = _rms_grid(rows)
        _rms_norm_bwd[grid](rows, weight, g, rstd, dx, rows.shape[0], rows.shape[1], ROWS=per_program, BLOCK=block)
        dw = None
        if ctx.needs_input_grad[1]:
            normed = (rows.float() * rstd[:, None]).to(rows.dtype).float()
            dw = (g.float() * normed).sum(0).to(weight.dtype)
        return dx.view(ctx.shape), dw, None


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    return RMSNormFunction.apply(x, norm.weight, norm.variance_epsilon)


@triton.jit
def _rotary(X, Cos, Sin, Y, T, H, xs_b, xs_h, xs_t, ys_b, ys_h, ys_t, cs_b, cs_t,
            HEADS: tl.constexpr, HALF: tl.constexpr, BACKWARD: tl.constexpr):
    """One token (b, t), all heads. Forward: y = rnd(x·cos) + rnd(rotate_half(x)·sin), rotate_half(x) = (−x₂, x₁).
    Backward (x = the gradient): its transpose, (rnd(g₁c₁) + rnd(g₂s₂), rnd(g₂c₂) − rnd(g₁s₁))."""
    pid = tl.program_id(0).to(tl.int64)
    b, t = pid // T, pid % T
    h = tl.arange(0, HEADS)[:, None]
    d = tl.arange(0, HALF)[None, :]
    keep = (h < H) & (d < HALF)
    x_at = X + b * xs_b + t * xs_t + h * xs_h + d
    x1 = tl.load(x_at, mask=keep, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + HALF, mask=keep, other=0.0).to(tl.float32)
    cs = b * cs_b + t * cs_t + d
    c1 = tl.load(Cos + cs).to(tl.float32)
    c2 = tl.load(Cos + cs + HALF).to(tl.float32)
    s1 = tl.load(Sin + cs).to(tl.float32)
    s2 = tl.load(Sin + cs + HALF).to(tl.float32)
    if BACKWARD:
        y1 = _rnd(x1 * c1, X) + _rnd(x2 * s2, X)
        y2 = _rnd(x2 * c2, X) - _rnd(x1 * s1, X)
    else:
        y1 = _rnd(x1 * c1, X) - _rnd(x2 * s1, X)
        y2 = _rnd(x2 * c2, X) + _rnd(x1 * s2, X)
    y_at = Y + b * ys_b + t * ys_t + h * ys_h + d
    tl.store(y_at, y1.to(Y.dtype.element_ty), mask=keep)
    tl.store(y_at + HALF, y2.to(Y.dtype.element_ty), mask=keep)


def _launch_rotary(x: Tensor, cos: Tensor, sin: Tensor, backward: bool) -> Tensor:
    batch, heads, tokens, head_dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    y = torch.empty_like(x)   # keeps x's layout ([B, T, H, D] in memory after HF's transpose)
    cos, sin = cos.expand(batch, tokens, head_dim), sin.expand(batch, tokens, head_dim)  # [1, T, D]: stride 0
    _rotary[(batch * tokens,)](x, cos, sin, y, tokens, heads, x.stride(0), x.stride(1), x.stride(2),
                               y.stride(0), y.stride(1), y.stride(2), cos.stride(0), cos.stride(1),
                               HEADS=triton.next_power_of_2(heads), HALF=head_dim // 2, BACKWARD=backward)
    return y


class RotaryFunction(torch.autograd.Function):
    """x [B, H, T, D] rotated by cos/sin [B or 1, T, D], as HF's apply_rotary_pos_emb."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        return _launch_rotary(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _launch_rotary(grad, cos, sin, backward=True), None, None


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return RotaryFunction.apply(x, cos.to(x.dtype), sin.to(x.dtype))


@triton.jit
def _silu_mul_fwd(Gate, Up, Out, n, BLOCK: tl.constexpr):
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = at < n
    gate = tl.load(Gate + at, mask=keep, other=0.0).to(tl.float32)
    up = tl.load(Up + at, mask=keep, other=0.0).to(tl.float32)
    act = _rnd(gate / (1.0 + tl.exp(-gate)), Gate)
    tl.store(Out + at, (act * up).to(Out.dtype.element_ty), mask=keep)


@triton.jit
def _silu_mul_bwd(Gate, Up, G, DGate, DUp, n, BLOCK: tl.constexpr):
    """h = rnd(silu(gate)) · up: dup = g · h_act, dgate = rnd(g · up) · σ · (1 + gate · (1 − σ))."""
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    keep = at < n
    gate = tl.load(Gate + at, mask=keep, other=0.0).to(tl.float32)
    up = tl.load(Up + at, mask=keep, other=0.0).to(tl.float32)
    g = tl.load(G + at, mask=keep, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-gate))
    act = _rnd(gate / (1.0 + tl.exp(-gate)), Gate)   # as the forward rounds it
    d_act = _rnd(g * up, Gate)
    tl.store(DUp + at, (g * act).to(DUp.dtype.element_ty), mask=keep)
    tl.store(DGate + at, (d_act * sig * (1.0 + gate * (1.0 - sig))).to(DGate.dtype.element_ty), mask=keep)


SILU_BLOCK = 1024


class SiLUMulFunction(torch.autograd.Function):
    """silu(gate) · up for same-shape gate and up, HF's gated-MLP activation."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty_like(gate)
        n = gate.numel()
        _silu_mul_fwd[(triton.cdiv(n, SILU_BLOCK),)](gate, up, out, n, BLOCK=SILU_BLOCK)
        ctx.save_for_backward(gate, up)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        gate, up = ctx.saved_tensors
        grad = grad.contiguous()
        d_gate, d_up = torch.empty_like(gate), torch.empty_like(up)
        n = gate.numel()
        _silu_mul_bwd[(triton.cdiv(n, SILU_BLOCK),)](gate, up, grad, d_gate, d_up, n, BLOCK=SILU_BLOCK)
        return d_gate, d_up


def silu_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    return mlp.down_proj(SiLUMulFunction.apply(mlp.gate_proj(x), mlp.up_proj(x)))
