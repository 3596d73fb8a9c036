"""Pipeline jobs: what each rule runs (train, evaluate, extract a basis), from plain dicts.

The entry points take plain dicts (what a Snakemake rule passes as params and
inputs), so they can also be called from a notebook or a test.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .grpo import TrainConfig
from .adapters import AdapterConfig
from .models import ModelSpec
from .specs import EVAL_SETTINGS, BasisSpec, ComputeSpec, GraderSpec, LoopholeSpec, RolloutSpec, TrainingRun
from .io import write_json, write_parquet
from .metrics import LAST_N
from .provenance import now, provenance
from .samples import EVAL_SAMPLE_COLUMNS, write_samples

log = logging.getLogger(__name__)


def load_student(model: ModelSpec, adapter: AdapterConfig):
    """(model, tokenizer, adapter) with the adapter attached and the base frozen."""
    from .adapters import attach_adapter
    from .models import load_model
    net, tokenizer = load_model(model)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, tokenizer, attach_adapter(net, adapter)


def load_run_basis(path: str, model, adapter, cfg: TrainConfig):
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


def make_refresh(pairs_path: str, basis: BasisSpec, cfg: TrainConfig, style: str, seed: int,
                 enable_thinking: bool = False):
    """Re-extract the run's basis from the current weights (same pair set and settings)."""
    from .basis import extract_basis, select_directions
    from .pairs import load_pair_set
    pairs = basis.select_pairs(load_pair_set(pairs_path).pairs)

    def refresh(model, tokenizer, adapter):
        fresh = extract_basis(model, tokenizer, adapter, pairs, basis.extraction(), seed=seed, style=style,
                              enable_thinking=enable_thinking)
        return select_directions(fresh, cfg.k_use, cfg.drop_bottom_frac)
    return refresh


def load_teacher_cache(path: str | None, cfg: TrainConfig) -> pd.DataFrame | None:
    from .teacher import validate_cache
    if not cfg.teacher_rows:
        return None
    if path is None:
        raise ValueError(f"group_size {cfg.group_size} x mix {cfg.mix} gives {cfg.teacher_rows} teacher rows per "
                         "group, but no teacher cache was given")
    if cfg.group_size * cfg.mix != cfg.teacher_rows:
        log.warning("group_size %d x mix %g is not a whole number of teacher rows: using G_t=%d (G_s=%d)",
                    cfg.group_size, cfg.mix, cfg.teacher_rows, cfg.student_rows)
    cache = pd.read_parquet(path)
    validate_cache(cache, path)
    return cache


def out_of_memory_hint(compute: ComputeSpec, rollout: RolloutSpec) -> str:
    """What to turn when a run does not fit its GPU, with the current values."""
    on_gpu = torch.cuda.is_available()
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30 if on_gpu else math.nan
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else math.nan
    return (f"out of GPU memory (peak {peak:.1f} of {total:.1f} GiB): lower compute.micro_batch_size "
            f"(now {compute.micro_batch_size}), set compute.gradient_checkpointing: true (now "
            f"{compute.gradient_checkpointing}) with compute.checkpoint_layers: null, i.e. all (now "
            f"{compute.checkpoint_layers}), set compute.fused_kernels: true (now {compute.fused_kernels}; "
            f"they save bf16 inputs, not fp32 copies), or lower rollout.batch_size (rows generated at "
            f"once, now {rollout.options.get('batch_size', 64)}); config/presets/fast_24gb.yaml is a 24 GB setting")


def run_training(params: Mapping[str, Any], inputs: Mapping[str, Any], out_dir: str,
                 compute: ComputeSpec = ComputeSpec(), snakemake_job: str | None = None,
                 tracking: Mapping[str, Any] | None = None, targets: Sequence[str] = ()) -> pd.DataFrame:
    """Train one run into `out_dir` (metrics.parquet, samples.parquet, adapter files, run.json).

    `tracking` (the config's tracking: section) picks the live trackers; `targets` are the job's
    outputs, for the rebuild command in run.json.
    """
    from .models import enable_gradient_checkpointing
    from .problems import read_problems
    from .rollout import make_backend
    from .tracking import TrackingConfig, open_tracker
    from .trainer import RunContext, settings_hash, train

    started = now()
    run = TrainingRun.from_params(params)
    cfg = run.settings
    torch.manual_seed(run.seed)
    model, tokenizer, adapter = load_student(run.student, run.adapter)
    if compute.gradient_checkpointing:
        enable_gradient_checkpointing(model, compute.checkpoint_layers)
    problems = read_problems(inputs["problems"], split="train")
    modes = run.loopholes.assigned_modes(problems)
    problems = [p for p in problems if modes[p.id] in cfg.train_modes]
    if not problems:
        raise ValueError(f"no train problems are assigned to train_modes {cfg.train_modes}")
    cache = load_teacher_cache(inputs.get("teacher_cache"), cfg)
    basis, refresh = None, None
    if "basis" in inputs:
        basis = load_run_basis(inputs["basis"], model, adapter, cfg)
        if cfg.refresh_every:
            refresh = make_refresh(inputs["pairs"], run.basis, cfg, run.loopholes.prompt_style, run.seed,
                                   run.student.enable_thinking)
    backend = make_backend(run.rollout.backend, model, tokenizer, adapter=adapter, **run.rollout.options)
    with run.grader.make(compute.grader_workers) as grader:
        ctx = RunContext(cfg=cfg, seed=run.seed, model=model, tokenizer=tokenizer, adapter=adapter, backend=backend,
                         grader=grader, problems=problems, modes=modes, all_modes=run.loopholes.modes,
                         prompt_style=run.loopholes.prompt_style, teacher_cache=cache, basis=basis,
                         refresh=refresh, micro_batch=compute.micro_batch_size,
                         fused_kernels=compute.fused_kernels, share_prompts=compute.share_prompts,
                         enable_thinking=run.student.enable_thinking,
                         tracker=open_tracker(TrackingConfig.from_config(tracking), out_dir, run.name, run.arm,
                                              params))
        try:
            frame = train(ctx, out_dir, settings_hash({**params, "seed": run.seed}), progress=compute.progress)
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError(out_of_memory_hint(compute, run.rollout)) from err
        finally:
            ctx.tracker.close()
    backend.close()
    if adapter.kind == "lora":   # also in peft's own layout: PeftModel.from_pretrained(base, out_dir) loads it
        adapter.save_peft(out_dir)
    null_cin = math.nan
    if basis is not None:
        from .basis import null_cin_level
        null_cin = null_cin_level(basis, adapter.module_sizes())
    write_json(Path(out_dir) / "run.json", {
        "run": run.name, "arm": run.arm, "seed": run.seed, "settings": params["settings"],
        "tags": list(cfg.tags), "params": params, "resolved": asdict(run), "started_at": started,
        "finished_at": now(), "null_cin": null_cin, "status": "complete", **provenance(snakemake_job, targets),
    })
    log.info("finished %s: last-%d hack %.3f, solve %.3f", run.name, LAST_N, frame["hack_s"].tail(LAST_N).mean(),
             frame["gt_s"].tail(LAST_N).mean(), extra={"console": True})
    return frame


def run_evaluation(params: Mapping[str, Any], inputs: Mapping[str, Any], out_path: str,
                   compute: ComputeSpec = ComputeSpec(), samples_path: str | None = None) -> pd.DataFrame:
    """The final adapter on the test split: hack rate with loophole hints, solve rate without, per mode.

    `samples_path`: where the graded completions go (vhack.samples.EVAL_SAMPLE_COLUMNS)."""
    from .evaluation import evaluate_adapter
    from .problems import read_problems
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    settings = {**{k: defaults[k] for k in EVAL_SETTINGS}, **params["settings"]}
    loopholes = LoopholeSpec.from_config(params["loopholes"])
    rollout = RolloutSpec.from_config(params["rollout"])
    student = ModelSpec.from_config(params["student"])
    model, tokenizer, adapter = load_student(student, AdapterConfig.from_config(params["adapter"]))
    adapter.load(inputs["adapter"])
    problems = read_problems(inputs["problems"], split="test")
    with GraderSpec.from_config(params["grader"]).make(compute.grader_workers) as grader:
        frame, samples = evaluate_adapter(model, tokenizer, adapter, problems, loopholes.assigned_modes(problems), grader,
                                          samples=settings["test_samples"], max_new_tokens=settings["max_new_tokens"],
                                          temperature=settings["temperature"], seed=int(params["seed"]),
                                          style=loopholes.prompt_style, backend_name=rollout.backend,
                                          backend_options=rollout.options,
                                          enable_thinking=student.enable_thinking)
    write_parquet(out_path, frame)
    if samples_path:
        write_samples(samples_path, samples, EVAL_SAMPLE_COLUMNS)
    return frame


def run_basis_extraction(params: Mapping[str, Any], pairs_path: str, out_path: str) -> None:
    """Extract `v_hack_<name>` from the base model (adapter at zero) and save it with its metadata."""
    import time

    from .basis import extract_basis, save_basis
    from .models import weight_hash
    from .pairs import load_pair_set
    spec = BasisSpec.from_config(params["basis"]["name"], params["basis"])
    model = ModelSpec.from_config(params["model"])
    net, tokenizer, adapter_obj = load_student(model, AdapterConfig.from_config(params["adapter"]))
    pair_file = load_pair_set(pairs_path)
    pairs = spec.select_pairs(pair_file.pairs)
    t0 = time.perf_counter()
    basis = extract_basis(net, tokenizer, adapter_obj, pairs, spec.extraction(), seed=spec.seed,
                          style=params["prompt_style"], enable_thinking=model.enable_thinking)
    seconds = time.perf_counter() - t0
    basis.metadata.update({
        "name": spec.name, "pair_set": spec.pairs, "pair_set_hash": pair_file.content_hash, "n_pairs": len(pairs),
        "model": model.path, "model_hash": weight_hash(net), "adapter_kind": adapter_obj.kind,
        "adapter_init_seed": adapter_obj.config.init_seed, "adapter_b_init_std": adapter_obj.config.lora_b_init_std,
        "targets": list(adapter_obj.config.targets), "seed": spec.seed, "extract_seconds": seconds,
        "modes": sorted({p.mode for p in pairs}),
    })
    save_basis(out_path, basis)
    log.info("basis %s: %d pairs, %d modules, %d directions, pair separation %.3f (random control ~0), %.2fs -> %s",
             spec.name, len(pairs), len(basis.vectors), basis.k_total(), basis.metadata["pair_separation"], seconds,
             out_path)
