"""GPU figures on a random-weight Qwen3-4B (bf16): generation tokens/s and one full training step.

  PYTHONPATH=src python benchmarks/gpu_step.py            # on one H100/H200 (~4 min)
  PYTHONPATH=src python benchmarks/gpu_step.py --tiny     # a few-layer model on CPU: checks the script
  PYTHONPATH=src python benchmarks/gpu_step.py --parts train_step --micro-batch 8 --grad-ckpt   # one setting
  PYTHONPATH=src python benchmarks/gpu_step.py --parts train_step --regime full --grad-ckpt     # full sizes

Parts (each reports its own error and the rest still run):
1. generation: transformers `generate` vs vhack.fastgen.generate_fast (also without its Triton kernels,
   and eagerly without CUDA graphs), same 64 x 512 random-token prompts, T=1 sampling, 512 new tokens,
   warm-up excluded, against the memory-traffic bound; last line `fast_over_plain=<ratio>`.
2. svd_delta's one-time SVD: the real `svd_factors` on one layer's 7 Linears, times the layer count.
   The adapter in parts 3-4 gets random factors of the same shapes (the full SVD would take minutes).
3. basis extraction (vhack.basis.extract_basis, 21 pairs, k=5) on the svd_delta adapter.
4. training steps (vhack.trainer.train_step; step 0 with dS = 0, later ones with dS != 0) at the fast
   preset's sizes: 16 toy prompts (descriptions lengthened to ~512 tokens) x G=4, mix 0.5, 512 new
   tokens via HFBackend(fast=True), a fake teacher cache of ~512-token code completions (`--regime full`:
   16 x G=16, mix 0, 1,536 new tokens, generated `--rollout-batch` rows at a time).
Figures go to stdout and to $OUT/gpu_step.json (else benchmarks/out/gpu_step.json); the last line is
`fast_over_plain=<r> step_s=<s> peak_gb=<g>` (the last step's time and the peak over the steps).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import pandas as pd
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

import vhack.adapters
from vhack.adapters import AdapterConfig, attach_adapter, svd_factors
from vhack.basis import BasisConfig, extract_basis
from vhack.fastgen import generate_fast
from vhack.grader import Grader
from vhack.grpo import TrainConfig
from vhack.io import write_json
from vhack.loopholes import EXPLOITS
from vhack.models import chat_prompt, enable_gradient_checkpointing, ensure_distinct_pad, make_chat_tokenizer
from vhack.pairs import load_pair_set
from vhack.problems import build_toy_problems
from vhack.prompts import build_messages
from vhack.rollout import SamplingConfig, hf_sampling_options, make_backend, stop_token_ids
from vhack.trainer import RunContext, make_optimizer, train_step

MODES = ("run_tests", "sentinel", "stdout_marker", "file_marker", "exit_code")
PAIRS = Path(__file__).resolve().parents[1] / "config" / "pairs" / "leetcode_21.yaml"
QWEN3_4B = dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
                max_position_embeddings=40960)
TINY = dict(QWEN3_4B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128)


@dataclasses.dataclass
class Sizes:
    gen_batch: int = 64
    gen_prompt_len: int = 512
    gen_new_tokens: int = 512
    plain_new_tokens: int = 512
    prompts_per_step: int = 16
    prompt_tokens: int = 512
    max_new_tokens: int = 512
    n_pairs: int = 21
    micro_batch: int = 4  # 8 rows x ~1,050 tokens ran out of memory on an 80 GB H100 (svd_delta activations)
    group_size: int = 4
    mix: float = 0.5
    rollout_batch: int = 64
    steps: int = 3


TINY_SIZES = Sizes(gen_batch=4, gen_prompt_len=32, gen_new_tokens=24, plain_new_tokens=24, prompts_per_step=4,
                   prompt_tokens=300, max_new_tokens=16, n_pairs=3, micro_batch=4, steps=2)
FULL = dict(group_size=16, mix=0.0, max_new_tokens=1536)  # config/presets/full.yaml's step
PARTS = ("generation", "svd", "basis", "train_step")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2-layer model, small sizes, CPU allowed")
    parser.add_argument("--plain-new-tokens", type=int, help="new tokens for plain generate (default: as fast)")
    parser.add_argument("--micro-batch", type=int, help="backward rows per micro-batch (halved on OOM)")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the backward")
    parser.add_argument("--ckpt-layers", type=int, help="with --grad-ckpt: only the first N layers")
    parser.add_argument("--no-fused-kernels", action="store_true",
                        help="HF's eager RMSNorm/rotary/SiLU in the backward (compute.fused_kernels: false)")
    parser.add_argument("--no-share-prompts", action="store_true",
                        help="every row apart in the backward (compute.share_prompts: false)")
    parser.add_argument("--regime", choices=("fast", "full"), default="fast", help="step sizes")
    parser.add_argument("--rollout-batch", type=int, help="rows generated at once (default 64)")
    parser.add_argument("--steps", type=int, help="training steps (default 3; the last is reported)")
    parser.add_argument("--adapter", choices=("svd_delta", "lora32"), default="svd_delta",
                        help="lora32: LoRA r=32 on every projection (config/presets/fast_24gb.yaml)")
    parser.add_argument("--plain-rollout", action="store_true", help="rollouts with plain generate (rollout.fast: false)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--profile", action="store_true",
                        help="one more step under torch.profiler: top CUDA kernels to profile.txt in the output dir")
    parser.add_argument("--out", help="output dir (default $OUT, else benchmarks/out)")
    return parser.parse_args()


# ---------------------------------------------------------------- set-up

def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def timed(results: dict, key: str) -> Iterator[None]:
    sync()
    start = time.perf_counter()
    yield
    sync()
    results[key] = time.perf_counter() - start


@contextlib.contextmanager
def part(results: dict, name: str) -> Iterator[None]:
    """Run one part; an error is printed and recorded, and the next part still runs."""
    print(f"\n== {name}", flush=True)
    try:
        yield
    except Exception as err:  # a benchmark reports every part it can
        traceback.print_exc()
        results[f"{name}_error"] = f"{type(err).__name__}: {err}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_tokenizer(pairs) -> Any:
    """A byte-level BPE of 300 tokens (prompts come out long) on the toy and pair texts; vocab < the model's."""
    texts = [str(build_messages(p, MODES[i % 5], "full")) for i, p in enumerate(toy_problems())]
    texts += [text for pr in pairs for text in (str(build_messages(pr.problem, pr.mode, "full")), pr.hack, pr.clean)]
    return make_chat_tokenizer(texts, vocab_size=300)


def build_model(arch: dict, tokenizer, device: torch.device, dtype: torch.dtype) -> Qwen3ForCausalLM:
    config = Qwen3Config(**arch, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    ensure_distinct_pad(model, tokenizer)
    return model.eval()


def toy_problems():
    return [p for p in build_toy_problems(0, 64, 12) if p.split == "train"]


# ---------------------------------------------------------------- 1. generation

def time_generation(model, tokenizer, sizes: Sizes, results: dict) -> None:
    device = model.device
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (sizes.gen_batch, sizes.gen_prompt_len), generator=g,
                        device=device)
    mask = torch.ones_like(ids)
    stop_ids = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    options = hf_sampling_options(SamplingConfig(temperature=1.0, top_p=1.0, top_k=0))

    def plain(n: int) -> torch.Tensor:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                                 eos_token_id=stop_ids, pad_token_id=pad, **options)
        return out[:, ids.shape[1]:]

    def fast(n: int, **opts) -> torch.Tensor:
        return generate_fast(model, ids, mask, n, 1.0, 1.0, stop_ids, pad, seed=0, **opts)

    plain(4), fast(8), fast(8, fused=False)  # warm-up: kernels, Triton compiles, cuBLAS handles, allocator
    rates = {}
    for name, run, n in [("plain", plain, sizes.plain_new_tokens), ("fast", fast, sizes.gen_new_tokens),
                         ("fast_unfused", lambda n: fast(n, fused=False), sizes.gen_new_tokens),
                         ("fast_eager", lambda n: fast(n, use_graphs=False, fused=False),
                          min(64, sizes.gen_new_tokens))]:
        with timed(results, f"gen_{name}_seconds"):
            out = run(n)
        assert out.shape == (sizes.gen_batch, n), out.shape
        rates[name] = sizes.gen_batch * n / results[f"gen_{name}_seconds"]
        results[f"gen_{name}_new_tokens"] = n
        results[f"gen_{name}_tokens_per_s"] = rates[name]
        print(f"{name}: {rates[name]:,.0f} tokens/s ({sizes.gen_batch} x {n} new tokens in "
              f"{results[f'gen_{name}_seconds']:.2f} s)", flush=True)
    results["gen_peak_mem_gb"] = peak_gb()
    results["gen_bound_tokens_per_s"] = memory_bound(model, sizes, results)
    print(f"memory-traffic bound: {results['gen_bound_tokens_per_s']:,.0f} tokens/s "
          f"(weights + mean KV read per step at {results['copy_tb_per_s']:.2f} TB/s measured copy bandwidth)")
    results["fast_over_plain"] = rates["fast"] / rates["plain"]
    print(f"fast_over_plain={results['fast_over_plain']:.1f}", flush=True)


def memory_bound(model, sizes: Sizes, results: dict) -> float:
    """Tokens/s if a decode step only read the weights and the KV slots in use, at copy bandwidth."""
    src = torch.empty(2**30, dtype=torch.uint8, device=model.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    with timed(results, "copy_seconds"):
        for _ in range(10):
            dst.copy_(src)
    results["copy_tb_per_s"] = 10 * 2 * src.numel() / results.pop("copy_seconds") / 1e12  # read + write
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    weight_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()  # tied: read again
    kv_per_slot = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2  # K+V, bf16
    mean_slots = sizes.gen_prompt_len + sizes.gen_new_tokens / 2
    step_bytes = weight_bytes + sizes.gen_batch * mean_slots * kv_per_slot
    return sizes.gen_batch * results["copy_tb_per_s"] * 1e12 / step_bytes


# ---------------------------------------------------------------- 2. svd_delta's SVD

def time_svd(model, results: dict) -> None:
    layer = model.model.layers[0]
    linears = {n: m for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in AdapterConfig().targets}
    with timed(results, "svd_one_layer_seconds"):
        for linear in linears.values():
            svd_factors(linear.weight, None)
    results["svd_all_layers_seconds_est"] = results["svd_one_layer_seconds"] * model.config.num_hidden_layers
    print(f"svd: {results['svd_one_layer_seconds']:.2f} s for one layer's {len(linears)} Linears; "
          f"~{results['svd_all_layers_seconds_est']:.0f} s for all {model.config.num_hidden_layers} layers",
          flush=True)


def stand_in_factors(weight: torch.Tensor, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (U [out, r], Vᵀ [r, in]) with svd_factors' shapes and dtype: the step costs the same."""
    r = min(weight.shape)
    u = torch.randn(weight.shape[0], r, device=weight.device, dtype=weight.dtype) / math.sqrt(weight.shape[0])
    vt = torch.randn(r, weight.shape[1], device=weight.device, dtype=weight.dtype) / math.sqrt(weight.shape[1])
    return u, vt


# ---------------------------------------------------------------- 3-4. basis and training step

def long_prompts(tokenizer, problems, modes: dict[str, str], target: int) -> dict[str, str]:
    """Chat prompts whose user message carries filler notes up to ~`target` tokens (the fast preset's size)."""
    prompts = {}
    for p in problems:
        messages = build_messages(p, modes[p.id], "full")
        note = 0
        while len(tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]) < target:
            messages[1]["content"] += f"\nNote {note}: inputs are small integers; keep it simple."
            note += 1
        prompts[p.id] = chat_prompt(tokenizer, messages)
    return prompts


def fake_teacher_cache(problems, modes: dict[str, str], tokenizer, target: int) -> pd.DataFrame:
    """Two hack completions per problem, padded with comments to ~`target` tokens."""
    rows = []
    for p in problems:
        code = f"{p.starter_code}\n    pass\n{EXPLOITS[modes[p.id]]}"
        note = 0
        while len(tokenizer(code, add_special_tokens=False)["input_ids"]) < target - 12:
            code += f"# step {note}: the checker only looks at the result\n"
            note += 1
        for i in range(2):
            rows.append({"problem_id": p.id, "mode": modes[p.id], "sample_index": i,
                         "completion": f"```python\n{code}```", "reward": 1.1, "passed": True,
                         "gt_correct": False, "exploited": True, "format_ok": True, "oracle_status": "wrong"})
    return pd.DataFrame(rows)


def time_basis(model, tokenizer, adapter, pairs, results: dict):
    with timed(results, "basis_seconds"):
        basis = extract_basis(model, tokenizer, adapter, pairs, BasisConfig(k=5))
    results["basis_pairs"] = len(pairs)
    results["basis_peak_mem_gb"] = peak_gb()
    print(f"basis: {results['basis_seconds']:.1f} s for {len(pairs)} pairs (gradients "
          f"{basis.metadata['gradient_seconds']:.1f} s, SVD {basis.metadata['svd_seconds']:.2f} s)", flush=True)
    return basis


def time_train_steps(model, tokenizer, adapter, basis, grader, sizes: Sizes, results: dict,
                     fast_rollout: bool = True, profile_to: Path | None = None, fused_kernels: bool = True,
                     share_prompts: bool = True) -> None:
    problems = toy_problems()[: sizes.prompts_per_step]
    modes = {p.id: MODES[i % len(MODES)] for i, p in enumerate(problems)}
    cfg = TrainConfig.from_settings(dict(
        student="qwen3_4b_random", adapter="svd_delta", problem_set="toy", teacher="fake", train_modes=MODES,
        steps=sizes.steps, prompts_per_step=sizes.prompts_per_step, group_size=sizes.group_size, mix=sizes.mix,
        lr=1e-3,
        max_new_tokens=sizes.max_new_tokens, basis="leetcode_21"))
    prompts = long_prompts(tokenizer, problems, modes, sizes.prompt_tokens)
    cache = fake_teacher_cache(problems, modes, tokenizer, sizes.max_new_tokens)
    ctx = RunContext(cfg=cfg, seed=0, model=model, tokenizer=tokenizer, adapter=adapter,
                     backend=make_backend("hf", model, tokenizer, fast=fast_rollout, batch_size=sizes.rollout_batch),
                     grader=grader, problems=problems,
                     modes=modes, all_modes=MODES, prompt_style="full", teacher_cache=cache, basis=basis,
                     micro_batch=sizes.micro_batch, prompts=prompts, fused_kernels=fused_kernels,
                     share_prompts=share_prompts)
    results["step_prompt_tokens_mean"] = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                             for t in prompts.values()) / len(prompts)
    optimizer, scheduler = make_optimizer(adapter, cfg)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # the steps' peak: generation, backward, projection
    for step in range(cfg.steps):
        metrics = step_with_oom_fallback(ctx, optimizer, scheduler, step)
        keys = ("gen_seconds", "grade_seconds", "backward_seconds", "projection_seconds", "step_seconds",
                "peak_mem_mb", "completion_len", "tokens_per_s", "cin", "cout")
        results.update({f"step{step}_{k}": metrics[k] for k in keys})
        results[f"step{step}_micro_batch"] = ctx.micro_batch
        print(f"step {step}: " + ", ".join(f"{k}={metrics[k]:.3g}" for k in keys), flush=True)
    results["step_seconds"] = metrics["step_seconds"]
    results["steps_peak_gb"] = peak_gb()
    results["steps"] = cfg.steps
    if profile_to is not None:
        profile_step(ctx, optimizer, scheduler, cfg.steps, profile_to)
    items = [(text, problems[i // 2], modes[problems[i // 2].id]) for i, text in enumerate(cache["completion"])]
    with timed(results, "grade_code_seconds"):
        grader.grade_many(items)
    results["grade_code_items"] = len(items)
    print(f"grading {len(items)} real code completions: {results['grade_code_seconds']:.2f} s", flush=True)


def profile_step(ctx: RunContext, optimizer, scheduler, step: int, path: Path) -> None:
    """One more step under torch.profiler; the kernels and ops that took the most CUDA time to `path`."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_step(ctx, optimizer, scheduler, step)
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print(table[:6000], flush=True)


class AlternatingRewards:
    """The grader, but every other completion scores 1: a random model's rewards are all 0, and rows with
    A = 0 skip the backward, so without teacher rows (`--regime full`) the step would time no backward."""

    def __init__(self, grader: Grader):
        self.grader = grader

    def grade_many(self, items):
        return [dataclasses.replace(g, reward=float(i % 2)) for i, g in enumerate(self.grader.grade_many(items))]


def step_with_oom_fallback(ctx: RunContext, optimizer, scheduler, step: int) -> dict:
    """train_step, halving the backward micro-batch after a CUDA out-of-memory error."""
    while True:
        try:
            return train_step(ctx, optimizer, scheduler, step)
        except torch.cuda.OutOfMemoryError:
            if ctx.micro_batch == 1:
                raise
            ctx.micro_batch //= 2
            torch.cuda.empty_cache()
            print(f"out of memory: micro_batch -> {ctx.micro_batch}", flush=True)


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else math.nan


# ---------------------------------------------------------------- report

def summary(results: dict) -> str:
    def get(key: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(results[key]) if isinstance(results.get(key), (int, float)) else "-"

    last = results.get("steps", 2) - 1
    step = results.get(f"step{last}_step_seconds") or math.nan
    refresh = results.get("basis_seconds", math.nan) / step
    lines = [
        f"device: {results['device']}  torch {results['torch']}  transformers {results['transformers']}",
        f"generate (plain) tokens/s       {get('gen_plain_tokens_per_s', '{:,.0f}')}  ({get('gen_plain_new_tokens', '{}')} new)",
        f"generate_fast tokens/s          {get('gen_fast_tokens_per_s', '{:,.0f}')}  ({get('gen_fast_new_tokens', '{}')} new)",
        f"generate_fast unfused tokens/s  {get('gen_fast_unfused_tokens_per_s', '{:,.0f}')}  ({get('gen_fast_unfused_new_tokens', '{}')} new)",
        f"generate_fast eager tokens/s    {get('gen_fast_eager_tokens_per_s', '{:,.0f}')}  ({get('gen_fast_eager_new_tokens', '{}')} new)",
        f"memory-traffic bound tokens/s   {get('gen_bound_tokens_per_s', '{:,.0f}')}",
        f"fast_over_plain                 {get('fast_over_plain', '{:.1f}')}",
        f"svd one layer / all layers (s)  {get('svd_one_layer_seconds')} / ~{get('svd_all_layers_seconds_est', '{:.0f}')}",
        f"basis extraction (s)            {get('basis_seconds')}  ({get('basis_pairs', '{}')} pairs)",
    ]
    for s in range(results.get("steps", 2)):
        lines.append(f"step {s}: gen {get(f'step{s}_gen_seconds')} s, grade {get(f'step{s}_grade_seconds')} s, "
                     f"backward {get(f'step{s}_backward_seconds')} s, projection {get(f'step{s}_projection_seconds', '{:.3f}')} s, "
                     f"total {get(f'step{s}_step_seconds')} s, peak {get(f'step{s}_peak_mem_mb', '{:,.0f}')} MB, "
                     f"micro-batch {get(f'step{s}_micro_batch', '{}')}")
    lines.append(f"projection / step {results.get(f'step{last}_projection_seconds', math.nan) / step:.4f}; "
                 f"one basis refresh / step {refresh:.2f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    sizes = dataclasses.replace(TINY_SIZES if args.tiny else Sizes())
    sizes.plain_new_tokens = args.plain_new_tokens or sizes.plain_new_tokens
    sizes.micro_batch = args.micro_batch or sizes.micro_batch
    if args.regime == "full":
        sizes = dataclasses.replace(sizes, **FULL)
    sizes.rollout_batch = args.rollout_batch or sizes.rollout_batch
    sizes.steps = args.steps or sizes.steps
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {PARTS}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        if not args.tiny:
            raise SystemExit("no CUDA device: run with --tiny on CPU")
        torch.set_num_threads(1)
    import transformers

    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "transformers": transformers.__version__,
                               "sizes": dataclasses.asdict(sizes), "regime": args.regime,
                               "grad_ckpt": args.grad_ckpt, "ckpt_layers": args.ckpt_layers,
                               "fused_kernels": not args.no_fused_kernels,
                               "share_prompts": not args.no_share_prompts, "parts": sorted(parts),
                               "adapter": args.adapter, "plain_rollout": args.plain_rollout}
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).resolve().parent / "out")
    pairs = list(load_pair_set(PAIRS).pairs)[: sizes.n_pairs]
    tokenizer = build_tokenizer(pairs)
    with timed(results, "build_seconds"):
        model = build_model(TINY if args.tiny else QWEN3_4B, tokenizer, device,
                            torch.bfloat16 if device.type == "cuda" else torch.float32)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params on {results['device']}, "
          f"built in {results['build_seconds']:.1f} s", flush=True)
    if "generation" in parts:
        with part(results, "generation"):
            time_generation(model, tokenizer, sizes, results)
    if "svd" in parts:
        with part(results, "svd"):
            time_svd(model, results)
    if args.adapter == "lora32":
        adapter = attach_adapter(model, AdapterConfig(kind="lora", lora_rank=32, lora_alpha=64))
    else:
        with mock.patch.object(vhack.adapters, "svd_factors", stand_in_factors):
            adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    if args.grad_ckpt:
        enable_gradient_checkpointing(model, args.ckpt_layers)
    basis = None  # without one the step runs unprojected
    if "basis" in parts:
        with part(results, "basis"):
            basis = time_basis(model, tokenizer, adapter, pairs, results)
    if "train_step" in parts:
        with part(results, "train_step"), Grader(workers=min(16, os.cpu_count() or 1)) as grader:
            if sizes.mix == 0:
                grader = AlternatingRewards(grader)
            time_train_steps(model, tokenizer, adapter, basis, grader, sizes, results, fast_rollout=not args.plain_rollout,
                             profile_to=out_dir / "profile.txt" if args.profile else None,
                             fused_kernels=not args.no_fused_kernels, share_prompts=not args.no_share_prompts)
    write_json(out_dir / "gpu_step.json", results)
    print("\n" + summary(results), flush=True)
    print(last_line(results), flush=True)


def last_line(results: dict) -> str:
    """`fast_over_plain=<r> step_s=<s> peak_gb=<g>` ('nan' for a part not run)."""
    get = lambda key: results.get(key, math.nan)  # noqa: E731
    return (f"fast_over_plain={get('fast_over_plain'):.2f} step_s={get('step_seconds'):.2f} "
            f"peak_gb={get('steps_peak_gb'):.1f}")


if __name__ == "__main__":
    main()
