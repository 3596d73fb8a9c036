"""Projection: remove the hack-ward part of a training update, per adapter module.

Per module with basis V (k × r, orthonormal rows, +v = hack-ward) and update
direction u (u = −g for a gradient, u = Δ for a parameter change):
c = V u; `one_sided` removes Σ relu(c_i) v_i, `no_gate` removes c V (all of
span V), `reverse` removes 2·relu(c) V (pushes anti-hack); `overshoot` scales
what is removed; `preserve_magnitude` rescales each module's result back to its
original norm.

Modules with equal r are stacked and projected with one bmm each, so a
Qwen3-4B-sized adapter (~250 modules) costs a handful of kernels, not hundreds.

Adam and the update (`project_on: update`): projecting g does not make the
optimizer's step orthogonal to V (Adam rescales per coordinate and carries
momentum). The trainer therefore projects the gradient, snapshots the
parameters, lets AdamW step, and calls `project_update_`, which projects the
actual change Δ = p_new − p_old and writes p_old + Δ' back. The moments keep
whatever Adam accumulated; only the applied change is cleaned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vhack.basis import Basis

MODES = ("erase", "none")
GATES = ("one_sided", "no_gate", "reverse")


@dataclass(frozen=True)
class ProjectionConfig:
    mode: str = "erase"            # "erase" | "none" (measure only)
    gate: str = "one_sided"        # "one_sided" | "no_gate" | "reverse"
    overshoot: float = 1.0         # 1.1 removes 110% of the gated component
    preserve_magnitude: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"projection.mode={self.mode!r}: expected one of {MODES}")
        if self.gate not in GATES:
            raise ValueError(f"projection.gate={self.gate!r}: expected one of {GATES}")
        if self.overshoot < 0:
            raise ValueError(f"projection.overshoot={self.overshoot}: must be >= 0")


@dataclass(frozen=True)
class ProjectionStats:
    cin: float              # ‖relu(V u)‖ / ‖u‖ over all modules, before
    cout: float             # the same after projection (0 under one_sided: an identity)
    gate_fired_frac: float  # fraction of the modules with directions (k_m > 0) with at least one c_i > 0
    norm_before: float      # ‖u‖ over all modules
    norm_after: float
    n_modules: int


@dataclass(frozen=True)
class _Group:
    names: tuple[str, ...]
    vectors: Tensor          # [m, k_max, r]; zero rows pad modules with fewer directions
    with_directions: int     # how many of the m modules have k > 0


def _groups(basis: Basis, names: tuple[str, ...], device: torch.device) -> list[_Group]:
    """Stack the basis of `names` by module width r; cached on the basis per (names, device)."""
    key = (names, device)
    if key not in basis.grouped_cache:
        missing = [n for n in names if n not in basis.vectors]
        if missing:
            raise KeyError(f"no basis vectors for modules {missing[:3]} (of {len(missing)}); "
                           f"the basis was extracted for a different adapter ({basis.metadata.get('path', 'in memory')})")
        by_width: dict[int, list[str]] = {}
        for name in names:
            by_width.setdefault(basis.vectors[name].shape[1], []).append(name)
        groups = []
        for width, members in by_width.items():
            k_max = max(basis.vectors[n].shape[0] for n in members)
            stacked = torch.zeros(len(members), k_max, width, dtype=torch.float32)
            for i, name in enumerate(members):
                stacked[i, : basis.vectors[name].shape[0]] = basis.vectors[name]
            with_directions = sum(basis.vectors[n].shape[0] > 0 for n in members)
            groups.append(_Group(tuple(members), stacked.to(device), with_directions))
        basis.grouped_cache[key] = groups
    return basis.grouped_cache[key]


def _stack(tensors: dict[str, Tensor], names: tuple[str, ...]) -> Tensor:
    return torch.stack([tensors[n] for n in names]).float()  # 1-D tensors → [m, r]


def _removed_coefficients(c: Tensor, cfg: ProjectionConfig) -> Tensor:
    if cfg.gate == "one_sided":
        removed = c.clamp_min(0)
    elif cfg.gate == "no_gate":
        removed = c
    else:  # reverse: remove the hack-ward part twice, i.e. push it anti-hack
        removed = 2 * c.clamp_min(0)
    return cfg.overshoot * removed


def _coefficients(vectors: Tensor, u: Tensor) -> Tensor:
    return torch.bmm(vectors, u.unsqueeze(-1)).squeeze(-1)  # [m, k_max, r] @ [m, r] → c [m, k_max]


def _project_group(u: Tensor, c: Tensor, vectors: Tensor, cfg: ProjectionConfig) -> tuple[Tensor, Tensor]:
    """u [m, r] with coefficients c [m, k] → (projected u [m, r], its coefficients [m, k])."""
    removed = _removed_coefficients(c, cfg)
    projected = u - torch.bmm(removed.unsqueeze(1), vectors).squeeze(1)   # [m, r]
    c_after = c - removed       # V (u − aV) = c − a: rows of V are orthonormal; saves a pass over V
    if cfg.preserve_magnitude:
        scale = u.norm(dim=1, keepdim=True) / projected.norm(dim=1, keepdim=True).clamp_min(1e-30)
        projected, c_after = projected * scale, c_after * scale
    return projected, c_after


class _Tally:
    """Accumulates the squared norms behind cin/cout on the device; one sync at the end."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, device=device)  # hackward², norm², hackward'², norm'², fired
        self.n_modules = 0
        self.n_with_directions = 0

    def add(self, u: Tensor, c: Tensor, projected: Tensor, c_after: Tensor, with_directions: int) -> None:
        hackward, hackward_after = c.clamp_min(0), c_after.clamp_min(0)  # relu before aggregating
        self.sums += torch.stack([
            hackward.square().sum(), u.square().sum(),
            hackward_after.square().sum(), projected.square().sum(),
            (hackward > 0).any(dim=1).sum().float(),
        ])
        self.n_modules += u.shape[0]
        self.n_with_directions += with_directions

    def stats(self) -> ProjectionStats:
        hw, norm, hw_after, norm_after, fired = self.sums.tolist()
        return ProjectionStats(
            cin=(hw / norm) ** 0.5 if norm > 0 else 0.0,
            cout=(hw_after / norm_after) ** 0.5 if norm_after > 0 else 0.0,
            gate_fired_frac=fired / max(self.n_with_directions, 1),
            norm_before=norm ** 0.5, norm_after=norm_after ** 0.5, n_modules=self.n_modules,
        )


def _device(tensors: dict[str, Tensor]) -> torch.device:
    return next(iter(tensors.values())).device


@torch.no_grad()
def _project_(targets: dict[str, Tensor], origin: dict[str, Tensor] | None, sign: float, basis: Basis,
              cfg: ProjectionConfig) -> ProjectionStats:
    """u = sign · (targets − origin) (origin None: 0); write origin + sign · u' back into targets."""
    tally = _Tally(_device(targets))
    for group in _groups(basis, tuple(targets), _device(targets)):
        current = _stack(targets, group.names)
        base = None if origin is None else _stack(origin, group.names)
        u = sign * (current if base is None else current - base)
        c = _coefficients(group.vectors, u)
        if cfg.mode == "none":
            tally.add(u, c, u, c, group.with_directions)
            continue
        projected, c_after = _project_group(u, c, group.vectors, cfg)
        tally.add(u, c, projected, c_after, group.with_directions)
        written = sign * projected if base is None else base + sign * projected
        torch._foreach_copy_([targets[n] for n in group.names], list(written.unbind(0)))
    return tally.stats()


def project_gradients_(grads: dict[str, Tensor], basis: Basis, cfg: ProjectionConfig) -> ProjectionStats:
    """Project 1-D gradient views in place (u = −g); with mode "none" only measure."""
    return _project_(grads, None, -1.0, basis, cfg)


def project_update_(params: dict[str, Tensor], previous: dict[str, Tensor], basis: Basis,
                    cfg: ProjectionConfig) -> ProjectionStats:
    """Project the optimizer's applied change Δ = params − previous; write previous + Δ' into params.

    `previous` is `snapshot(params)` taken just before `optimizer.step()`.
    """
    return _project_(params, previous, 1.0, basis, cfg)


def snapshot(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of the parameters, for `project_update_` after the optimizer step."""
    return {name: p.detach().clone() for name, p in params.items()}


def hackward_fraction(vectors: dict[str, Tensor], basis: Basis, *, is_gradient: bool = True) -> float:
    """‖relu(V u)‖ / ‖u‖ over the concatenated modules (cin, cin_s, cin_t, cin of the update).

    Gradients are negated (u = −g); pass is_gradient=False for a parameter change Δ. Nothing is modified.
    """
    return _project_(vectors, None, -1.0 if is_gradient else 1.0, basis, ProjectionConfig(mode="none")).cin
