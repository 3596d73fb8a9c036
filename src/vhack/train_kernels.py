"""Triton kernels for the training forward and backward (CUDA): RMSNorm, rotary embedding, SiLU·mul.

HF's eager versions run 5-10 elementwise kernels each way and save fp32 copies for the backward;
these run one kernel each way, save only their bf16 inputs (and RMSNorm's per-row 1/rms), and round
every intermediate to the input dtype where HF's ops do, so losses and gradients match HF's to within
float rounding. `training_kernels(model)` swaps them in for a block of code;
on CPU, or without Triton, it changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable, Iterator

import torch
from torch import Tensor, nn



def available(model: nn.Module) -> bool:
    """CUDA weights and an importable Triton."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return next(model.parameters()).is_cuda


@contextlib.contextmanager
def training_kernels(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside: `model`'s RMSNorms, gated SiLU MLPs and rotary embedding run the Triton autograd kernels."""
    if not (enabled and available(model)):
        yield
        return
    from . import train_kernels_triton as ops
    from .fastgen import RMS_NORMS, SILU
    norms = [m for m in model.modules() if type(m).__name__ in RMS_NORMS]
    mlps = [m for m in model.modules() if all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj"))
            and type(getattr(m, "act_fn", None)).__name__ in SILU]
    modeling = {sys.modules[type(m).__module__] for m in model.modules()}
    rotary = [mod for mod in modeling if callable(getattr(mod, "apply_rotary_pos_emb", None))]
    originals = [mod.apply_rotary_pos_emb for mod in rotary]
    try:
        for norm in norms:
            norm.forward = functools.partial(ops.rms_norm, norm)
        for mlp in mlps:
            mlp.forward = functools.partial(ops.silu_mlp, mlp)
        for mod, original in zip(rotary, originals):
            mod.apply_rotary_pos_emb = rotary_with_fallback(ops.apply_rotary, original)
        yield
    finally:
        for module in norms + mlps:
            module.__dict__.pop("forward", None)
        for mod, original in zip(rotary, originals):
            mod.apply_rotary_pos_emb = original


def rotary_with_fallback(fused: Callable, original: Callable) -> Callable:
    """The fused rotary for [B, H, T, D] q/k with cos/sin [B, T, D]; anything else goes to `original`."""
    @functools.wraps(original)
    def apply(q, k, cos, sin, unsqueeze_dim=1, **kwargs):
        if unsqueeze_dim != 1 or kwargs or cos.dim() != 3 or q.shape[-1] % 2:
            return original(q, k, cos, sin, unsqueeze_dim, **kwargs)
        return fused(q, cos, sin), fused(k, cos, sin)
    return apply
