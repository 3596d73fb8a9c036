"""The training backward alone (vhack.grpo.backward_rows) on a random-weight Qwen3-4B with svd_delta, per setting.

  PYTHONPATH=src python benchmarks/backward_step.py                      # one H100/H200 (~3 min)
  PYTHONPATH=src python benchmarks/backward_step.py --tiny               # 2 layers on CPU: checks the script
  PYTHONPATH=src python benchmarks/backward_step.py --settings k:1,ckpt:18,mb:4 --profile

The fast preset's backward: 16 prompts x G = 4 rows of 512 prompt + 512 completion tokens, half of them
teacher rows, every advantage non-zero; student rows then teacher rows, as the trainer runs them. A setting
is `k:<0|1>` (vhack.train_kernels off/on), `ckpt:<layers checkpointed, 0 = none>`, `mb:<rows per
micro-batch>`, `share:<0|1>` (a group's rows run their prompt once: compute.share_prompts; default 1). Per
setting: seconds per backward (the mean of --reps after one warm-up), peak GiB (weights, factors and merged
weights included), and the gradient's relative difference from the first setting's. Figures to
$OUT/backward_step.json (else benchmarks/out/).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

import vhack.adapters
from vhack.adapters import AdapterConfig, attach_adapter
from vhack.grpo import Batch, TrainConfig, backward_rows
from vhack.io import write_json
from vhack.models import enable_gradient_checkpointing
from vhack.train_kernels import training_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import QWEN3_4B, TINY, stand_in_factors  # noqa: E402

DEFAULT_SETTINGS = ("k:0,ckpt:18,mb:4,share:0 k:1,ckpt:18,mb:4,share:0 k:1,ckpt:18,mb:4 k:1,ckpt:9,mb:4 "
                    "k:1,ckpt:0,mb:4 k:1,ckpt:36,mb:8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2-layer model, 8 short rows, CPU allowed")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="space-separated settings (see above)")
    parser.add_argument("--reps", type=int, default=2, help="timed backwards per setting")
    parser.add_argument("--rows", type=int, help="rows in the batch (default 64; --tiny 8)")
    parser.add_argument("--fp32-reference", action="store_true",
                        help="then the model in fp32 (eager, every layer checkpointed, 2 rows a micro-batch): "
                             "each setting's gradient difference from it (bf16 noise vs a real error)")
    parser.add_argument("--profile", action="store_true", help="the last setting once more under torch.profiler")
    parser.add_argument("--out", help="output dir (default $OUT, else benchmarks/out)")
    return parser.parse_args()


def parse_setting(text: str) -> dict[str, int]:
    setting = {"k": 1, "ckpt": 0, "mb": 4, "share": 1}
    for item in text.split(","):
        key, value = item.split(":")
        if key not in setting:
            raise SystemExit(f"setting {text!r}: unknown key {key!r}; expected k, ckpt, mb, share")
        setting[key] = int(value)
    return setting


def build(tiny: bool, device: torch.device):
    arch = TINY if tiny else QWEN3_4B
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**arch, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    model = model.to(torch.bfloat16 if device.type == "cuda" else torch.float32)
    with mock.patch.object(vhack.adapters, "svd_factors", stand_in_factors):
        adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    with torch.no_grad():
        for p in adapter.params.values():
            p.copy_(torch.randn_like(p) * 1e-3)   # non-zero δS: merged weights exist, as after step 0
    return model, adapter


def make_rows(tiny: bool, vocab: int, rows: int | None) -> Batch:
    prompt, completion = (24, 24) if tiny else (512, 512)
    rows = rows or (8 if tiny else 64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (rows, prompt + completion), generator=g)
    ids[:, :prompt] = ids[torch.arange(rows) // 4 * 4, :prompt]   # G = 4 rows per prompt
    completion_mask = torch.zeros(rows, prompt + completion - 1)
    completion_mask[:, prompt - 1:] = 1.0
    advantages = torch.where(torch.arange(rows) % 2 == 0, 0.5, -0.5)
    off_policy = torch.arange(rows) % 4 >= 2
    return Batch(ids, torch.ones_like(ids), completion_mask, advantages, off_policy)


def set_checkpointing(model, layers: int) -> None:
    model.gradient_checkpointing_disable()
    if layers:
        enable_gradient_checkpointing(model, layers)


def run_backward(model, adapter, batch: Batch, cfg: TrainConfig, setting: dict) -> tuple[float, dict]:
    for p in adapter.params.values():
        p.grad = None
    with training_kernels(model, enabled=bool(setting["k"])):
        start = time.perf_counter()
        for part in (~batch.off_policy, batch.off_policy):   # student rows, then teacher rows
            backward_rows(model, batch.rows(torch.nonzero(part).squeeze(1)), cfg,
                          float(len(batch) * cfg.max_new_tokens), setting["mb"], share_prompts=bool(setting["share"]))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, {n: p.grad.detach().float().clone() for n, p in adapter.params.items()}


def relative_difference(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).square().sum()) for n in a)
    den = sum(float(b[n].square().sum()) for n in b)
    return math.sqrt(num / den) if den else math.nan


def fp32_reference(model, adapter, batch, cfg, all_grads: dict, results: dict) -> None:
    model.float()
    adapter.factors = {n: (u.float(), vt.float()) for n, (u, vt) in adapter.factors.items()}
    adapter._merged_at_version.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    setting = {"k": 0, "ckpt": model.config.num_hidden_layers, "mb": 2}
    set_checkpointing(model, setting["ckpt"])
    seconds, exact = run_backward(model, adapter, batch, cfg, setting)
    results["fp32_reference_seconds"] = seconds
    for text, grads in all_grads.items():
        results[text]["fp32_rel_diff"] = relative_difference(grads, exact)
        print(f"{text}: fp32_rel_diff={results[text]['fp32_rel_diff']:.2e}", flush=True)


def profile_once(model, adapter, batch, cfg, setting, path: Path) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_backward(model, adapter, batch, cfg, setting)
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=80)
    path.write_text(table)
    print(table[:8000], flush=True)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("no GPU: run with --tiny to check the script on CPU")
    out_dir = Path(args.out or os.environ.get("OUT") or "benchmarks/out")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, adapter = build(args.tiny, device)
    model.train()
    batch = make_rows(args.tiny, model.config.vocab_size, args.rows)
    cfg = TrainConfig(student="random", adapter="svd_delta", problem_set="fast", teacher="t", train_modes=(),
                      steps=1, prompts_per_step=16, group_size=4, mix=0.5, lr=1e-3,
                      max_new_tokens=batch.completion_mask.shape[1] // 2 + 1)
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "rows": len(batch), "tokens_per_row": batch.input_ids.shape[1]}
    reference = None
    settings = [parse_setting(s) for s in args.settings.split()]
    all_grads = {}
    for text, setting in zip(args.settings.split(), settings):
        set_checkpointing(model, setting["ckpt"])
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            run_backward(model, adapter, batch, cfg, setting)   # warm-up: Triton compiles, cuBLAS plans
            times = [run_backward(model, adapter, batch, cfg, setting) for _ in range(args.reps)]
        except torch.cuda.OutOfMemoryError:
            results[text] = {"error": "out of memory"}
            print(f"{text}: out of memory", flush=True)
            continue
        grads = times[-1][1]
        reference = reference or grads
        all_grads[text] = grads
        entry = {"seconds": sum(t for t, _ in times) / len(times),
                 "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan,
                 "grad_rel_diff": relative_difference(grads, reference)}
        results[text] = entry
        print(f"{text}: backward_s={entry['seconds']:.2f} peak_gb={entry['peak_gb']:.1f} "
              f"grad_rel_diff={entry['grad_rel_diff']:.2e}", flush=True)
    if args.fp32_reference:
        fp32_reference(model, adapter, batch, cfg, all_grads, results)
    if args.profile:
        set_checkpointing(model, settings[-1]["ckpt"])
        profile_once(model, adapter, batch, cfg, settings[-1], out_dir / "backward_profile.txt")
    write_json(out_dir / "backward_step.json", results)


if __name__ == "__main__":
    main()
