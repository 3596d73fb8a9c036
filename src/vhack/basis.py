"""The v_hack basis: per adapter module, the directions in which hack completions pull.

For every pair, the gradient of the mean completion NLL of the hack (g_hack) and
of the clean completion (g_clean). d = g_hack − g_clean is a loss gradient; the
update a GRPO step with advantages +1 (hack) / −1 (clean) applies is −d. The
basis lives in *update* space: rows of D are −d = g_clean − g_hack, and each
basis vector is oriented so that c = v·u > 0 means "u moves toward the hack"
(the projection takes u = −g, so the signs agree there).

Method `divergence` scores each side at the tokens where the pair decides instead of
over the whole completion: with j the first completion position where the hack and
clean token ids differ (same prompt, so the prefix before j is shared), the row of D
is ∇[log p(hack_j) − log p(clean_j)] (update space, +v hack-ward). With
`divergence_tokens: m` each side's score is summed over its own positions
j, j+1, …, j+m−1 (the two sides aligned at the divergence point; each conditioned on
its own prefix; a side that ends sooner, at its EOS, contributes fewer tokens).
The whole-completion basis mostly spans "likelihood of a correct solution"; this one
spans the hack decision.

Per module: top-k right singular vectors of D (n_pairs × r) via the n × n Gram
matrix D Dᵀ, oriented by a majority vote of sign(D v) over pairs (an SVD's signs
are arbitrary), singular values kept. Variants: rank-1 mean difference;
`solve_orth_m` (remove the top-m subspace of the clean gradients first);
controls `random`, `shuffled`, `nonhack` (see `basis_from_differences`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from vhack.grpo import make_batch, token_logprobs
from vhack.io import atomic_path
from vhack.models import chat_prompt
from vhack.pairs import Pair
from vhack.prompts import build_messages

METHODS = ("svd", "meandiff", "divergence")
CONTROLS = ("none", "random", "shuffled", "nonhack")
RANK_TOL = 1e-5   # directions with σ below this fraction of the module's largest are numerically zero
FORMAT = "vhack-basis/1"


class BasisError(ValueError):
    """A basis file is missing, malformed, or does not match the model/adapter it is applied to."""


@dataclass(frozen=True)
class BasisConfig:
    method: str = "svd"           # "svd" | "meandiff" (normalised mean of the differences, k = 1)
    #                               | "divergence" (SVD of the gradients at the first differing token)
    k: int = 5                    # directions saved per module (fewer where D has lower rank)
    solve_orth_m: int = 0         # remove the top-m clean-gradient subspace from D before the SVD
    control: str = "none"         # "none" | "random" | "shuffled" | "nonhack"
    divergence_tokens: int = 1    # method divergence: score m tokens per side from the divergence point

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"basis method={self.method!r}: expected one of {METHODS}")
        if self.control not in CONTROLS:
            raise ValueError(f"basis control={self.control!r}: expected one of {CONTROLS}")
        if self.k < 1 or self.solve_orth_m < 0:
            raise ValueError(f"basis k={self.k}, solve_orth_m={self.solve_orth_m}: need k >= 1, m >= 0")
        if self.method == "meandiff" and self.k != 1:
            raise ValueError(f"basis method=meandiff has exactly one direction: set k: 1 (got k={self.k})")
        if self.divergence_tokens < 1 or (self.divergence_tokens != 1 and self.method != "divergence"):
            raise ValueError(f"basis divergence_tokens={self.divergence_tokens}: needs method divergence "
                             f"(got {self.method!r}) and m >= 1")


@dataclass
class Basis:
    vectors: dict[str, Tensor]           # name -> [k_m, r], orthonormal rows, +v hack-ward
    singular_values: dict[str, Tensor]   # name -> [k_m], descending
    metadata: dict
    grouped_cache: dict = field(default_factory=dict, repr=False, compare=False)  # projection's stacked V

    def k_total(self) -> int:
        return sum(v.shape[0] for v in self.vectors.values())


# ---------------------------------------------------------------- linear algebra

def top_directions(D: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k right singular vectors [k', r] and singular values [k'] of D [n, r], k' <= k.

    Through the n × n Gram matrix (n pairs ≪ r): D Dᵀ = U Λ Uᵀ, V = Uᵀ D / σ.
    Numerically zero directions are dropped, so a zero module (LoRA A at init) gets k' = 0.
    """
    D64 = D.double()
    eigenvalues, U = torch.linalg.eigh(D64 @ D64.T)                # ascending
    sigma = eigenvalues.flip(0).clamp_min(0).sqrt()[:k]
    U = U.flip(1)[:, : sigma.numel()]
    keep = int((sigma > RANK_TOL * sigma[0]).sum()) if sigma.numel() and sigma[0] > 0 else 0
    V = (U[:, :keep].T @ D64) / sigma[:keep, None]
    return V.to(D.dtype), sigma[:keep].to(D.dtype)


def orient_hackward(V: Tensor, D: Tensor) -> Tensor:
    """Flip each row of V [k, r] so that most pairs' hack-ward differences D [n, r] have D v > 0.

    Ties in the vote go to the sign of the summed coefficient.
    """
    coefficients = D @ V.T                                           # [n, k]
    votes = coefficients.sign().sum(0)
    sign = torch.where(votes != 0, votes.sign(), coefficients.sum(0).sign())
    return V * torch.where(sign == 0, 1.0, sign)[:, None]


def mean_direction(D: Tensor) -> tuple[Tensor, Tensor]:
    """The normalised mean of D [n, r] as a [1, r] basis and its norm as the 'singular value'."""
    mean = D.mean(0)
    norm = mean.norm()
    if norm == 0:
        return D.new_zeros(0, D.shape[1]), D.new_zeros(0)
    return (mean / norm)[None], norm[None]


def remove_subspace(D: Tensor, Q: Tensor) -> Tensor:
    """D [n, r] minus its component in the row space of Q [m, r] (orthonormal rows)."""
    return D - (D @ Q.T) @ Q


def random_orthonormal(k: int, r: int, generator: torch.Generator) -> Tensor:
    """k random orthonormal rows [k, r] (QR of a Gaussian)."""
    gaussian = torch.randn(r, k, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(gaussian).Q.T.float()


def hackward_differences(g_hack: Tensor, g_clean: Tensor) -> Tensor:
    """−d = g_clean − g_hack [n, r]: the update of a +1 hack / −1 clean GRPO step (update space)."""
    return g_clean - g_hack


def _derangement(n: int, generator: torch.Generator) -> Tensor:
    """A permutation with no fixed point (n >= 2): a random cycle through all indices."""
    order = torch.randperm(n, generator=generator)
    target = torch.empty(n, dtype=torch.long)
    target[order] = order.roll(-1)
    return target


def _label_shuffled(differences: dict[str, Tensor], clean: dict[str, Tensor], generator: torch.Generator
                    ) -> dict[str, Tensor]:
    """Differences with the hack/clean labels shuffled across the pool of 2n completions.

    A random half of the pairs swap their two sides, then the "hack" side of pair i meets the
    "clean" side of pair π(i) (a derangement; each side scored under its own prompt). A sign
    flip alone would leave DᵀD, and so the span, unchanged; re-pairing alone would keep
    mean(D) exactly (the meandiff basis) and every hack side in the "hack" slot.
    """
    n = next(iter(differences.values())).shape[0]
    swap = (torch.rand(n, generator=generator) < 0.5)[:, None]
    other = _derangement(n, generator)
    shuffled = {}
    for name, D in differences.items():
        g_clean = clean[name]
        g_hack = g_clean - D                                                # D = g_clean − g_hack
        as_hack = torch.where(swap.to(D.device), g_clean, g_hack)
        as_clean = torch.where(swap.to(D.device), g_hack, g_clean)
        shuffled[name] = hackward_differences(as_hack, as_clean[other.to(D.device)])
    return shuffled


def _control_differences(differences: dict[str, Tensor], clean: dict[str, Tensor] | None, control: str,
                         generator: torch.Generator) -> dict[str, Tensor]:
    """The hack-ward differences the basis is built from, after the label control."""
    if control in ("shuffled", "nonhack") and clean is None:
        raise ValueError(f"control={control} needs the clean-side gradients")
    if control == "shuffled":
        return _label_shuffled(differences, clean, generator)
    if control == "nonhack":   # "hack" side = another pair's clean completion
        n = next(iter(differences.values())).shape[0]
        other = _derangement(n, generator)
        return {name: hackward_differences(g[other.to(g.device)], g) for name, g in clean.items()}
    return differences


def basis_from_differences(differences: dict[str, Tensor], clean: dict[str, Tensor] | None, cfg: BasisConfig,
                           seed: int, solve: dict[str, Tensor] | None = None
                           ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-module (vectors [k_m, r], singular values [k_m]) from hack-ward differences [n, r]
    (`hackward_differences`); `clean` [n, r] (the clean side of the same score) is needed for
    the controls shuffled and nonhack, `solve` [n, r] (whole-completion clean NLL gradients;
    default `clean`) for solve_orth_m.

    Controls: `shuffled` shuffles the hack/clean labels across pairs (`_label_shuffled`, seeded);
    `nonhack` replaces each hack by another pair's clean completion (a derangement of the
    pairs, each side under its own prompt), so both sides are correct code and the
    difference carries no hack label; `random` keeps the real extraction's k_m and singular
    values (so k_use and the noise floor cut the same counts) with random orthonormal rows.
    """
    generator = torch.Generator().manual_seed(seed)
    solve = clean if solve is None else solve
    if cfg.solve_orth_m and solve is None:
        raise ValueError("solve_orth_m needs the clean-side gradients")
    used = _control_differences(differences, clean, cfg.control, generator)
    vectors, singular_values = {}, {}
    for name, D in used.items():                                          # D [n, r]
        if cfg.solve_orth_m:  # the known-solve subspace comes from the true clean completions
            D = remove_subspace(D, top_directions(solve[name], cfg.solve_orth_m)[0])
        if cfg.method == "meandiff":
            V, sigma = mean_direction(D)
        else:
            V, sigma = top_directions(D, cfg.k)
            V = orient_hackward(V, D)
        if cfg.control == "random":
            V = random_orthonormal(V.shape[0], V.shape[1], generator).to(V)
        vectors[name], singular_values[name] = V.float().cpu(), sigma.float().cpu()
    return vectors, singular_values


# ---------------------------------------------------------------- gradients of the pairs

def _sequences(tokenizer, pair: Pair, style: str, enable_thinking: bool) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, hack ids + EOS, clean ids + EOS), tokenised as the trainer does."""
    prompt = chat_prompt(tokenizer, build_messages(pair.problem, pair.mode, style), enable_thinking)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids(prompt), ids(pair.hack) + [tokenizer.eos_token_id], ids(pair.clean) + [tokenizer.eos_token_id]


def divergence_point(hack_ids: Sequence[int], clean_ids: Sequence[int], pair_id: str = "?") -> int:
    """The first completion position where the hack and clean token ids differ."""
    for j, (h, c) in enumerate(zip(hack_ids, clean_ids)):
        if h != c:
            return j
    raise ValueError(f"pair {pair_id!r}: hack and clean completions are the same tokens; "
                     f"fix the pair (the divergence basis needs a token where they differ)")


def divergence_windows(hack_ids: Sequence[int], clean_ids: Sequence[int], m: int, pair_id: str = "?"
                       ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Completion positions [start, stop) scored on each side: m tokens from the divergence point,
    fewer where a side ends (its EOS is the last one scored)."""
    j = divergence_point(hack_ids, clean_ids, pair_id)
    return (j, min(j + m, len(hack_ids))), (j, min(j + m, len(clean_ids)))


def nll_gradient(model, adapter, prompts: Sequence[list[int]], completions: Sequence[list[int]],
                 weights: Sequence[float], pad_id: int,
                 windows: Sequence[tuple[int, int]] | None = None) -> dict[str, Tensor]:
    """∇ Σ_i w_i · NLL_i in adapter space: one padded forward/backward.

    NLL_i is row i's mean completion NLL, or with `windows` the summed NLL of its completion
    tokens [start, stop). Uses autograd.grad, so the parameters' .grad (a trainer's
    accumulated gradient) is untouched.
    """
    device = next(model.parameters()).device
    batch = make_batch(prompts, completions, weights, [False] * len(prompts), pad_id).to(device)
    logp = token_logprobs(model, batch.input_ids, batch.attention_mask)       # [B, T-1]
    if windows is None:
        nll = -(logp * batch.completion_mask).sum(1) / batch.completion_mask.sum(1)  # [B]
    else:
        scored = torch.zeros_like(logp)                                        # [B, T-1]
        for i, (prompt, (start, stop)) in enumerate(zip(prompts, windows)):
            scored[i, len(prompt) - 1 + start: len(prompt) - 1 + stop] = 1.0  # targets shifted by one
        nll = -(logp * scored).sum(1)                                          # [B]
    grads = torch.autograd.grad((batch.advantages * nll).sum(), list(adapter.params.values()))
    return {name: g.reshape(-1) for name, g in zip(adapter.params, grads)}


@dataclass
class PairGradients:
    """Per-pair gradients in adapter space, each name -> [n, r]."""

    differences: dict[str, Tensor]          # hack-ward g_clean − g_hack of the method's score
    clean: dict[str, Tensor] | None         # g_clean of the method's score (controls shuffled / nonhack)
    solve: dict[str, Tensor] | None         # ∇ mean NLL of the whole clean completion (solve_orth_m)
    divergence_positions: list[int] | None  # method divergence: first differing completion token per pair


def pair_gradients(model, tokenizer, adapter, pairs: Sequence[Pair], cfg: BasisConfig, style: str,
                   enable_thinking: bool = False) -> PairGradients:
    """The gradients `basis_from_differences` needs for `cfg`, pair by pair.

    A difference costs one forward/backward of the padded pair [hack, clean] with weights
    (−1, +1); per-example gradients cannot share a backward pass, so pairs go one at a time.
    Method divergence scores each side over its `divergence_windows`; the others over the
    whole completion (mean NLL), where the clean side is also the solve gradient.
    """
    divergence = cfg.method == "divergence"
    with_clean = cfg.control in ("shuffled", "nonhack") or (bool(cfg.solve_orth_m) and not divergence)
    with_solve = bool(cfg.solve_orth_m) and divergence
    n, sizes = len(pairs), adapter.module_sizes()
    device = next(iter(adapter.params.values())).device

    def empty() -> dict[str, Tensor]:
        return {name: torch.empty(n, r, device=device) for name, r in sizes.items()}
    differences = empty()
    clean, solve = (empty() if with_clean else None), (empty() if with_solve else None)
    positions = [] if divergence else None
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for i, pair in enumerate(pairs):
                prompt, hack_ids, clean_ids = _sequences(tokenizer, pair, style, enable_thinking)
                windows = None
                if divergence:
                    windows = divergence_windows(hack_ids, clean_ids, cfg.divergence_tokens, pair.id)
                    positions.append(windows[0][0])
                rows = [(differences, [prompt, prompt], [hack_ids, clean_ids], [-1.0, 1.0], windows)]
                if clean is not None:
                    rows.append((clean, [prompt], [clean_ids], [1.0], None if windows is None else [windows[1]]))
                if solve is not None:
                    rows.append((solve, [prompt], [clean_ids], [1.0], None))
                for target, prompts, completions, weights, scored in rows:
                    for name, g in nll_gradient(model, adapter, prompts, completions, weights, pad, scored).items():
                        target[name][i] = g
    finally:
        model.train(was_training)
    return PairGradients(differences, clean, solve, positions)


def extract_basis(model, tokenizer, adapter, pairs: Sequence[Pair], cfg: BasisConfig, seed: int = 0,
                  style: str = "full", enable_thinking: bool = False) -> Basis:
    """The v_hack basis at the model's current weights (base model, or mid-training for a refresh).

    metadata["pair_separation"] scores the basis on the pairs' true differences (see
    `pair_separation`): positive for a basis that separates them, ≈ 0 for a random one.
    metadata["modules_without_directions"] lists the modules that got k = 0.
    """
    if not pairs:
        raise ValueError("extract_basis: no pairs (check the pair set and the basis' `modes`)")
    t0 = time.perf_counter()
    grads = pair_gradients(model, tokenizer, adapter, pairs, cfg, style, enable_thinking)
    t1 = time.perf_counter()
    vectors, singular_values = basis_from_differences(grads.differences, grads.clean, cfg, seed, grads.solve)
    basis = Basis(vectors, singular_values, {
        **asdict(cfg), "seed": seed, "style": style, "n_pairs": len(pairs), "pair_ids": [p.id for p in pairs],
        "gradient_seconds": t1 - t0, "svd_seconds": time.perf_counter() - t1,
        "modules_without_directions": [name for name, V in vectors.items() if V.shape[0] == 0],
    })
    if grads.divergence_positions is not None:
        basis.metadata["divergence_positions"] = grads.divergence_positions
    basis.metadata["pair_separation"] = pair_separation(basis, grads.differences)
    return basis


# ---------------------------------------------------------------- selection at load

def select_directions(basis: Basis, k_use: int | None = None, drop_bottom_frac: float | None = None) -> Basis:
    """Keep the top `k_use` directions per module, then drop those whose singular value falls
    below the `drop_bottom_frac` quantile of all modules' singular values pooled (a noise floor)."""
    saved_k = basis.metadata.get("k")
    if k_use is not None and saved_k is not None and k_use > saved_k:
        raise BasisError(f"k_use={k_use} exceeds the k={saved_k} saved in the basis "
                         f"({basis.metadata.get('path', 'in memory')}); re-extract with a larger k")
    vectors = {n: v[:k_use] for n, v in basis.vectors.items()}
    sigmas = {n: s[:k_use] for n, s in basis.singular_values.items()}
    if drop_bottom_frac:
        pooled = torch.cat([s for s in sigmas.values()])
        floor = torch.quantile(pooled.double(), drop_bottom_frac).item() if pooled.numel() else 0.0
        kept = {n: int((s >= floor).sum()) for n, s in sigmas.items()}  # σ descending: a prefix survives
        vectors = {n: v[: kept[n]] for n, v in vectors.items()}
        sigmas = {n: s[: kept[n]] for n, s in sigmas.items()}
    metadata = {**basis.metadata, "k_use": k_use, "drop_bottom_frac": drop_bottom_frac}
    return Basis(vectors, sigmas, metadata)


# ---------------------------------------------------------------- report figures

def null_cin_level(basis: Basis, sizes: dict[str, int]) -> float:
    """cin expected of random directions: mean of sqrt(k_m / r_m) over the modules with directions
    (k_m > 0; LoRA A at B = 0 has none and is never projected). NaN if no module has any."""
    levels = [(basis.vectors[name].shape[0] / r) ** 0.5 for name, r in sizes.items() if basis.vectors[name].shape[0]]
    return sum(levels) / len(levels) if levels else math.nan


def pair_separation(basis: Basis, D: dict[str, Tensor]) -> float:
    """Mean over pairs of the cosine between the pair's hack-ward difference (rows of D [n, r],
    concatenated over modules) and the basis' summed direction Σ v / sqrt(K).

    Positive when the basis points the pairs' way; ≈ 0 for random directions.
    """
    n = next(iter(D.values())).shape[0]
    along = torch.zeros(n, dtype=torch.float64)
    norm2 = torch.zeros(n, dtype=torch.float64)
    for name, d in D.items():
        d = d.double().cpu()
        along += (d @ basis.vectors[name].double().T).sum(1)
        norm2 += d.square().sum(1)
    total_k = basis.k_total()
    if total_k == 0:
        return 0.0
    return (along / (norm2.sqrt().clamp_min(1e-300) * total_k ** 0.5)).mean().item()


# ---------------------------------------------------------------- files

def save_basis(path: str | Path, basis: Basis) -> None:
    """Safetensors: vectors/<module> [k, r], singular_values/<module> [k]; metadata as JSON."""
    tensors = {}
    for name in basis.vectors:
        tensors[f"vectors/{name}"] = basis.vectors[name].contiguous().cpu()
        tensors[f"singular_values/{name}"] = basis.singular_values[name].contiguous().cpu()
    header = {"format": FORMAT, "vhack": json.dumps(basis.metadata, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def _read(path: Path) -> Basis:
    if not path.exists():
        raise BasisError(f"basis file {path} not found; build it with "
                         f"`snakemake {path}` (rule extract_basis)")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise BasisError(f"{path}: not a vhack basis (format {header.get('format')!r}, expected {FORMAT!r})")
        vectors, sigmas = {}, {}
        for key in f.keys():
            kind, _, name = key.partition("/")
            (vectors if kind == "vectors" else sigmas)[name] = f.get_tensor(key)
    return Basis(vectors, sigmas, {**json.loads(header["vhack"]), "path": str(path)})


def _check_matches(basis: Basis, path: Path, model_hash: str | None, adapter_kind: str | None,
                   module_sizes: dict[str, int] | None, adapter_init: dict | None = None) -> None:
    meta = basis.metadata
    fix = "re-extract it (snakemake --forcerun extract_basis) or point the run at the matching basis"
    defaults = {"adapter_init_seed": 0, "adapter_b_init_std": 0.0}   # files from before these keys
    for key, value in (adapter_init or {}).items():
        if meta.get(key, defaults.get(key)) != value:
            raise BasisError(f"{path}: built with {key}={meta.get(key, defaults.get(key))!r}, but the run's adapter "
                             f"has {value!r} (the adapter's start is part of the basis' space); {fix}")
    if model_hash is not None and meta.get("model_hash") != model_hash:
        raise BasisError(f"{path}: extracted from model {meta.get('model_id')!r} with weight hash "
                         f"{str(meta.get('model_hash'))[:16]}, but the model in use has {model_hash[:16]}; {fix}")
    if adapter_kind is not None and meta.get("adapter_kind") != adapter_kind:
        raise BasisError(f"{path}: built for adapter kind {meta.get('adapter_kind')!r}, "
                         f"but the run uses {adapter_kind!r}; {fix}")
    if module_sizes is not None:
        missing = sorted(set(module_sizes) - set(basis.vectors))
        extra = sorted(set(basis.vectors) - set(module_sizes))
        if missing or extra:
            raise BasisError(f"{path}: adapter modules differ: missing from the basis {missing[:3]} "
                             f"({len(missing)}), not in the adapter {extra[:3]} ({len(extra)}); {fix}")
        wrong = [f"{n}: basis r={basis.vectors[n].shape[1]}, adapter r={r}"
                 for n, r in module_sizes.items() if basis.vectors[n].shape[1] != r]
        if wrong:
            raise BasisError(f"{path}: module sizes differ ({len(wrong)}), e.g. {wrong[0]}; {fix}")


def load_basis(path: str | Path, *, model_hash: str | None = None, adapter_kind: str | None = None,
               module_sizes: dict[str, int] | None = None, k_use: int | None = None,
               drop_bottom_frac: float | None = None, adapter_init: dict | None = None) -> Basis:
    """Read a basis, check it fits the model/adapter it is applied to, then `select_directions`."""
    path = Path(path)
    basis = _read(path)
    _check_matches(basis, path, model_hash, adapter_kind, module_sizes, adapter_init)
    return select_directions(basis, k_use, drop_bottom_frac)
