"""Pipeline jobs: what each rule runs (train, evaluate, extract a basis), from plain dicts.

The entry points take plain dicts (what a Snakemake rule passes as params and
inputs), so they can also be called from a notebook or a test.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from .grpo import TrainConfig
from .io import write_json, write_parquet
from .provenance import now, provenance

log = logging.getLogger(__name__)


def make_grader(cfg: Mapping[str, Any]):
    from .grader import Grader, RewardConfig
    from .sandbox import SandboxLimits
    limits = SandboxLimits(timeout_s=cfg.get("timeout_s", 2.0), memory_mb=cfg.get("memory_mb", 512))
    reward = RewardConfig(format_bonus=cfg.get("format_bonus", 0.1), pass_reward=cfg.get("pass_reward", 1.0))
    return Grader(workers=cfg.get("workers"), limits=limits, reward=reward)


def adapter_config(cfg: Mapping[str, Any], cache_dir: str = "results/cache/svd"):
    from .adapters import AdapterConfig
    kw = {"kind": cfg["kind"], "svd_cache_dir": cache_dir}
    if "targets" in cfg:
        kw["targets"] = tuple(cfg["targets"])
    if "rank" in cfg:
        kw["lora_rank"] = cfg["rank"]
    if "alpha" in cfg:
        kw["lora_alpha"] = cfg["alpha"]
    if "init_seed" in cfg:
        kw["init_seed"] = cfg["init_seed"]
    if "b_init_std" in cfg:
        kw["lora_b_init_std"] = cfg["b_init_std"]
    return AdapterConfig(**kw)


def load_student(model: Mapping[str, Any], adapter: Mapping[str, Any]):
    """(model, tokenizer, adapter) with the adapter attached and the base frozen."""
    from .adapters import attach_adapter
    from .models import ModelSpec, load_model
    net, tokenizer = load_model(ModelSpec.from_config(model))
    for p in net.parameters():
        p.requires_grad_(False)
    return net, tokenizer, attach_adapter(net, adapter_config(adapter))


def assigned_modes(problems, loopholes: Mapping[str, Any]) -> dict[str, str]:
    from .prompts import assign_mode
    return {p.id: assign_mode(p.id, loopholes["modes"], loopholes.get("assign_seed", 0)) for p in problems}


def load_run_basis(path: str, params: Mapping[str, Any], model, adapter, cfg: TrainConfig):
    from .basis import load_basis
    from .models import weight_hash
    return load_basis(path, model_hash=weight_hash(model), adapter_kind=adapter.kind,
                      module_sizes=adapter.module_sizes(), k_use=cfg.k_use, drop_bottom_frac=cfg.drop_bottom_frac,
                      adapter_init=adapter_init(adapter))


def adapter_init(adapter) -> dict | None:
    """The adapter's starting point a LoRA basis depends on (A's seed, B's init); None for svd_delta (δS = 0)."""
    if adapter.kind != "lora":
        return None
    return {"adapter_init_seed": adapter.config.init_seed, "adapter_b_init_std": adapter.config.lora_b_init_std}


def make_refresh(pairs_path: str, basis_params: Mapping[str, Any], cfg: TrainConfig, style: str, seed: int,
                 enable_thinking: bool = False):
    """Re-extract the run's basis from the current weights (same pair set and settings)."""
    from .basis import extract_basis, select_directions
    from .pairs import load_pair_set
    pairs = select_pairs(load_pair_set(pairs_path).pairs, basis_params)
    bcfg = basis_config(basis_params)

    def refresh(model, tokenizer, adapter):
        basis = extract_basis(model, tokenizer, adapter, pairs, bcfg, seed=seed, style=style,
                              enable_thinking=enable_thinking)
        return select_directions(basis, cfg.k_use, cfg.drop_bottom_frac)
    return refresh


def basis_config(basis_params: Mapping[str, Any]):
    from .basis import BasisConfig
    keys = ("method", "k", "solve_orth_m", "control", "divergence_tokens")
    return BasisConfig(**{k: basis_params[k] for k in keys if k in basis_params})


def select_pairs(pairs, basis_params: Mapping[str, Any]):
    """A weak detector knows only some loophole modes: keep only those pairs."""
    modes = basis_params.get("modes")
    return [p for p in pairs if p.mode in modes] if modes else list(pairs)


def run_training(params: Mapping[str, Any], inputs: Mapping[str, Any], out_dir: str, compute: Mapping[str, Any],
                 snakemake_job: str | None = None) -> pd.DataFrame:
    """Train one run into `out_dir` (metrics.parquet, adapter.safetensors, run.json)."""
    from .problems import read_problems
    from .rollout import make_backend
    from .trainer import RunContext, settings_hash, train

    started = now()
    cfg = TrainConfig.from_settings(params["settings"])
    seed = int(params["seed"])
    torch.manual_seed(seed)
    model, tokenizer, adapter = load_student(params["student"], params["adapter"])
    loopholes = params["loopholes"]
    problems = read_problems(inputs["problems"], split="train")
    modes = assigned_modes(problems, loopholes)
    problems = [p for p in problems if modes[p.id] in cfg.train_modes]
    if not problems:
        raise ValueError(f"no train problems are assigned to train_modes {cfg.train_modes}")
    cache = pd.read_parquet(inputs["teacher_cache"]) if cfg.teacher_rows and "teacher_cache" in inputs else None
    if cfg.mix and cfg.group_size * cfg.mix != cfg.teacher_rows:
        log.warning("group_size %d x mix %g is not a whole number of teacher rows: using G_t=%d (G_s=%d)",
                    cfg.group_size, cfg.mix, cfg.teacher_rows, cfg.student_rows)
    if cfg.teacher_rows and cache is None:
        raise ValueError("mix > 0 needs a teacher cache; none was given")
    basis, refresh = None, None
    if "basis" in inputs:
        basis = load_run_basis(inputs["basis"], params, model, adapter, cfg)
        if cfg.refresh_every:
            refresh = make_refresh(inputs["pairs"], params["basis"], cfg, loopholes.get("prompt_style", "full"), seed,
                                   params["student"].get("enable_thinking", False))
    backend = make_backend(params["rollout"].get("backend", "hf"), model, tokenizer, adapter=adapter,
                           **{k: v for k, v in params["rollout"].items() if k != "backend"})
    with make_grader(params["grader"]) as grader:
        ctx = RunContext(cfg=cfg, seed=seed, model=model, tokenizer=tokenizer, adapter=adapter, backend=backend,
                         grader=grader, problems=problems, modes=modes, all_modes=tuple(loopholes["modes"]),
                         prompt_style=loopholes.get("prompt_style", "full"), teacher_cache=cache, basis=basis,
                         refresh=refresh, micro_batch=compute.get("micro_batch_size", 16),
                         enable_thinking=params["student"].get("enable_thinking", False))
        frame = train(ctx, out_dir, settings_hash({**params, "seed": seed}), progress=compute.get("progress", True))
    backend.close()
    null_cin = math.nan
    if basis is not None:
        from .basis import null_cin_level
        null_cin = null_cin_level(basis, adapter.module_sizes())
    write_json(Path(out_dir) / "run.json", {
        "run": params["run"], "arm": params["arm"], "seed": seed, "settings": params["settings"],
        "tags": list(cfg.tags), "params": params, "started_at": started, "finished_at": now(),
        "null_cin": null_cin, "status": "complete", **provenance(snakemake_job),
    })
    return frame


def run_evaluation(params: Mapping[str, Any], inputs: Mapping[str, Any], out_path: str,
                   compute: Mapping[str, Any]) -> pd.DataFrame:
    """The final adapter on the test split: hack rate with loophole hints, solve rate without, per mode."""
    from .evaluation import evaluate_adapter
    from .problems import read_problems
    cfg = TrainConfig.from_settings(params["settings"])
    model, tokenizer, adapter = load_student(params["student"], params["adapter"])
    adapter.load(inputs["adapter"])
    problems = read_problems(inputs["problems"], split="test")
    with make_grader(params["grader"]) as grader:
        frame = evaluate_adapter(model, tokenizer, adapter, problems, assigned_modes(problems, params["loopholes"]),
                                 grader, samples=cfg.test_samples, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, seed=int(params["seed"]),
                                 style=params["loopholes"].get("prompt_style", "full"),
                                 backend_name=params["rollout"].get("backend", "hf"),
                                 enable_thinking=params["student"].get("enable_thinking", False))
    write_parquet(out_path, frame)
    return frame


def run_basis_extraction(name: str, basis_params: Mapping[str, Any], model: Mapping[str, Any],
                         adapter: Mapping[str, Any], pairs_path: str, out_path: str, style: str,
                         pair_set: str) -> None:
    """Extract `v_hack_<name>` from the base model (adapter at zero) and save it with its metadata."""
    import time

    from .basis import extract_basis, save_basis
    from .models import weight_hash
    from .pairs import load_pair_set
    net, tokenizer, adapter_obj = load_student(model, adapter)
    pair_file = load_pair_set(pairs_path)
    pairs = select_pairs(pair_file.pairs, basis_params)
    seed = basis_params.get("seed", 0)
    t0 = time.perf_counter()
    basis = extract_basis(net, tokenizer, adapter_obj, pairs, basis_config(basis_params), seed=seed, style=style,
                          enable_thinking=model.get("enable_thinking", False))
    seconds = time.perf_counter() - t0
    basis.metadata.update({
        "name": name, "pair_set": pair_set, "pair_set_hash": pair_file.content_hash, "n_pairs": len(pairs),
        "model": model["path"], "model_hash": weight_hash(net), "adapter_kind": adapter_obj.kind,
        "adapter_init_seed": adapter_obj.config.init_seed, "adapter_b_init_std": adapter_obj.config.lora_b_init_std,
        "targets": list(adapter_obj.config.targets), "seed": seed, "extract_seconds": seconds,
        "modes": sorted({p.mode for p in pairs}),
    })
    save_basis(out_path, basis)
    log.info("basis %s: %d pairs, %d modules, %d directions, pair separation %.3f (random control ~0), %.2fs -> %s",
             name, len(pairs), len(basis.vectors), basis.k_total(), basis.metadata["pair_separation"], seconds,
             out_path)
