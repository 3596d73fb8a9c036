"""The trainable space the hack basis and the projection live in.

Two kinds behind one interface (`Adapter`): `svd_delta`, a trainable vector δS per Linear with
y = W x + U diag(δS) Vᵀ x (W = U Σ Vᵀ computed once), and `lora` through peft. The flat space
is a dict module name -> 1-D tensor; the views it hands out share storage with the parameters
and their gradients, so basis extraction and projection work in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vhack.io import atomic_path

METADATA_KEY = "vhack_adapter"


@dataclass
class AdapterConfig:
    kind: str = "svd_delta"  # svd_delta | lora
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    svd_cache_dir: str | None = None  # U, Vᵀ per weight, keyed by a hash of the weight
    init_seed: int = 0  # LoRA's random A is part of the space a basis lives in: same seed for basis and runs
    # > 0: LoRA's B starts at N(0, std²) (drawn from init_seed) instead of 0, so lora_A has a gradient at
    # extraction and gets directions; the start is then off the base model by (α/r)·B A (the KL reference
    # stays the base). Basis and runs share it like A's init.
    lora_b_init_std: float = 0.0


class Adapter:
    """Trainable parameters attached to a frozen base model, seen as a flat space of modules."""

    kind: str

    def __init__(self, model: nn.Module, config: AdapterConfig, params: dict[str, nn.Parameter]):
        self.model = model
        self.config = config
        self.params = params  # module name -> parameter, in model order

    @property
    def module_names(self) -> list[str]:
        return list(self.params)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def module_sizes(self) -> dict[str, int]:
        return {name: p.numel() for name, p in self.params.items()}

    def flat_params(self) -> dict[str, torch.Tensor]:
        """1-D views of the parameters: writing into one changes the model."""
        return {name: p.detach().view(-1) for name, p in self.params.items()}

    def flat_grads(self) -> dict[str, torch.Tensor]:
        """1-D views of the gradients (no copies): editing one edits what the optimizer sees."""
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # a real buffer, so a view of it reaches the optimizer
        return {name: p.grad.view(-1) for name, p in self.params.items()}

    def zero_(self) -> None:
        """Zero the gradients in place; views from flat_grads() stay valid."""
        for p in self.params.values():
            if p.grad is not None:
                p.grad.zero_()

    def disabled(self) -> contextlib.AbstractContextManager:
        """Context in which the model computes as the base model (the free reference model)."""
        raise NotImplementedError

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain HF weights of the base model (adapter left out)."""
        return dict(self.model.state_dict())

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """Module name -> W + ΔW of each targeted Linear, in W's dtype (sampling runs on these)."""
        raise NotImplementedError

    @torch.no_grad()
    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain HF weights of the adapted model (adapter folded into the base weights)."""
        return {**self.base_state_dict(), **{f"{name}.weight": w for name, w in self.merged_weights().items()}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.params):
            missing, extra = set(self.params) - set(state), set(state) - set(self.params)
            raise KeyError(f"adapter state does not match: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
        for name, p in self.params.items():
            if state[name].shape != p.shape:
                raise ValueError(f"adapter state {name!r}: shape {tuple(state[name].shape)} != {tuple(p.shape)}")
            p.copy_(state[name])

    def metadata(self) -> dict:
        return {"kind": self.kind, "config": asdict(self.config), "sizes": self.module_sizes()}

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file; kind, config and module sizes ride in its header as JSON."""
        tensors = {name: t.contiguous().cpu() for name, t in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(self.metadata())})

    def load(self, path: str | os.PathLike) -> None:
        saved = read_adapter_metadata(path)
        if saved["kind"] != self.kind or saved["sizes"] != self.module_sizes():
            raise ValueError(
                f"adapter file {path} holds a {saved['kind']} adapter over {len(saved['sizes'])} modules; "
                f"this model has a {self.kind} adapter over {len(self.params)}: attach it with load_adapter()"
            )
        device = next(iter(self.params.values())).device
        self.load_state_dict(load_file(path, device=str(device)))


class SVDDeltaAdapter(Adapter):
    """y = W x + U diag(δS) Vᵀ x for every targeted Linear, via forward hooks.

    The model's own modules and state_dict stay untouched (plain HF names); δS is fp32.
    """

    kind = "svd_delta"

    def __init__(self, model: nn.Module, config: AdapterConfig):
        model.requires_grad_(False)
        linears = targeted_linears(model, config.targets)
        params: dict[str, nn.Parameter] = {}
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (U [out, r], Vᵀ [r, in])
        for name, linear in linears.items():
            self.factors[name] = svd_factors(linear.weight, config.svd_cache_dir)
            params[name] = nn.Parameter(torch.zeros(min(linear.weight.shape), device=linear.weight.device))
            linear.register_forward_hook(self._delta_hook(name))
        super().__init__(model, config, params)
        self.linears = linears
        self.enabled = True
        self._zero_at_version: dict[str, tuple[int, bool]] = {}

    def _is_zero(self, name: str) -> bool:
        # Re-check only after an in-place write (optimizer step, copy_, a flat view) bumped the
        # version counter: no device sync per layer during generation. Writes through `.data`
        # bypass the counter, so never write δS that way.
        delta_s = self.params[name]
        version, zero = self._zero_at_version.get(name, (-1, False))
        if version != delta_s._version:
            zero = not bool(delta_s.detach().any())
            self._zero_at_version[name] = (delta_s._version, zero)
        return zero

    def _delta_hook(self, name: str):
        def add_delta(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
            if not self.enabled:
                return None
            if self._is_zero(name) and not torch.is_grad_enabled():
                return None  # output untouched: bit-identical to the base model (with grad the
                # delta path runs so δS gets a gradient; adding an exact 0 leaves the output equal)
            u, vt = self.factors[name]
            delta_s = self.params[name].to(output.dtype)
            return output + F.linear(F.linear(inputs[0], vt) * delta_s, u)  # [..., in] -> [..., r] -> [..., out]

        return add_delta

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    @torch.no_grad()
    def merged_weights(self) -> dict[str, torch.Tensor]:
        merged = {}
        for name, linear in self.linears.items():
            if self._is_zero(name):
                merged[name] = linear.weight  # no copy while δS = 0
                continue
            u, vt = self.factors[name]
            merged[name] = linear.weight + (u * self.params[name].to(u.dtype)) @ vt  # W + U diag(δS) Vᵀ, [out, in]
        return merged


class LoRAAdapter(Adapter):
    """peft LoRA (B = 0 at init, or N(0, lora_b_init_std²)); every lora_A and lora_B weight is its own
    module of the flat space."""

    kind = "lora"

    def __init__(self, model: nn.Module, config: AdapterConfig):
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.targets),
        )
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.init_seed)   # the basis job and every run must share A's init
            self.peft_model = get_peft_model(model, lora_config)  # injects into `model` in place, freezes the base
            self.lora_layers = lora_layers(model)
            if config.lora_b_init_std > 0:
                with torch.no_grad():
                    for layer in self.lora_layers.values():
                        layer.lora_B["default"].weight.normal_(0.0, config.lora_b_init_std)
        params = {}
        for name, layer in self.lora_layers.items():
            params[f"{name}.lora_A"] = layer.lora_A["default"].weight  # [rank, in]
            params[f"{name}.lora_B"] = layer.lora_B["default"].weight  # [out, rank]
        super().__init__(model, config, params)

    def disabled(self) -> contextlib.AbstractContextManager:
        return self.peft_model.disable_adapter()

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return {  # undo peft's renaming: q_proj.base_layer.weight -> q_proj.weight
            name.replace(".base_layer.", "."): tensor
            for name, tensor in self.model.state_dict().items()
            if "lora_" not in name
        }

    @torch.no_grad()
    def merged_weights(self) -> dict[str, torch.Tensor]:
        merged = {}
        for name, layer in self.lora_layers.items():
            base = layer.get_base_layer().weight
            merged[name] = base + layer.get_delta_weight("default").to(base.dtype)  # W + (α/r)·B A
        return merged

    def save_peft(self, out_dir: str | os.PathLike) -> Path:
        """peft's own format (adapter_config.json + adapter_model.safetensors), as vLLM loads it."""
        self.peft_model.save_pretrained(out_dir)
        return Path(out_dir)


ADAPTER_KINDS: dict[str, type[Adapter]] = {"svd_delta": SVDDeltaAdapter, "lora": LoRAAdapter}


def attach_adapter(model: nn.Module, config: AdapterConfig) -> Adapter:
    """Freeze `model` and attach a fresh adapter (δS = 0; LoRA B = 0 unless `lora_b_init_std`)."""
    if config.kind not in ADAPTER_KINDS:
        raise ValueError(f"AdapterConfig.kind={config.kind!r}; choose one of {sorted(ADAPTER_KINDS)}")
    return ADAPTER_KINDS[config.kind](model, config)


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} is not a vhack adapter file (no {METADATA_KEY!r} in its safetensors header)")
    return json.loads(header[METADATA_KEY])


def load_adapter(model: nn.Module, path: str | os.PathLike) -> Adapter:
    """Attach the adapter saved at `path` (its config comes from the file) and load its weights."""
    saved = read_adapter_metadata(path)
    config = AdapterConfig(**{**saved["config"], "targets": tuple(saved["config"]["targets"])})
    adapter = attach_adapter(model, config)
    adapter.load(path)
    return adapter


def targeted_linears(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }
    if not linears:
        raise ValueError(f"no nn.Linear named one of {targets} in the model: check AdapterConfig.targets")
    return linears


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def svd_factors(weight: torch.Tensor, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [out, r], Vᵀ [r, in]) of W = U Σ Vᵀ in float32, stored in W's dtype; cached on disk by weight hash."""
    cache_file = Path(cache_dir) / f"svd_{tensor_digest(weight)}.safetensors" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        cached = load_file(cache_file, device=str(weight.device))
        return cached["u"], cached["vt"]
    u, _, vt = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    u, vt = u.to(weight.dtype).contiguous(), vt.to(weight.dtype).contiguous()
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            save_file({"u": u.cpu(), "vt": vt.cpu()}, tmp)
    return u, vt


def tensor_digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    digest = hashlib.sha256(f"{tuple(tensor.shape)}:{tensor.dtype};".encode())
    digest.update(data)  # buffer protocol: no copy
    return digest.hexdigest()[:32]
