"""Where a vhack.fastgen decode step spends its time (random-weight Qwen3-4B, bf16, one GPU).

  PYTHONPATH=src python benchmarks/fastgen_profile.py [--batch 64 --prompt 512 --new 512 --group 1]

Prints: prefill seconds, one end-to-end generate_fast, graph replay ms/step, and the top CUDA kernels of
eager fused decode steps (torch.profiler), grouped by kernel name.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen3Config, Qwen3ForCausalLM

from vhack import fastgen

QWEN3_4B = dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
                max_position_embeddings=40960)


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--bucket", type=int, nargs="*", default=[128])
    ap.add_argument("--group", type=int, default=1,
                    help="rows per prompt (a GRPO group): prefilled once, its slots read once per decode step")
    args = ap.parse_args()
    if args.batch % args.group:
        ap.error(f"--batch {args.batch} is not a multiple of --group {args.group}")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B, pad_token_id=0, eos_token_id=1)).to(torch.bfloat16).eval()
    ids = torch.randint(2, 151936, (args.batch // args.group, args.prompt), device="cuda")
    ids = ids.repeat_interleave(args.group, 0)   # prompt-major, as the trainer samples
    mask = torch.ones_like(ids)

    def gen(n, **kw):
        return fastgen.generate_fast(model, ids, mask, n, 1.0, 1.0, [1], 0, seed=0, **kw)

    gen(8)
    for bucket in args.bucket:
        gen(8, kv_bucket=bucket)
        s, _ = timed(lambda: gen(args.new, kv_bucket=bucket))
        print(f"generate_fast bucket={bucket}: {s:.3f} s, {args.batch * args.new / s:,.0f} tok/s", flush=True)
    calls = []
    run = fastgen.StepRunner.run

    def timed_run(self, kv_len):
        calls.append(timed(lambda: run(self, kv_len))[0])
    fastgen.StepRunner.run = timed_run
    gen(args.new)
    fastgen.StepRunner.run = run
    replays = sorted(calls[1:])
    print(f"decode steps (synced each): first (eager + capture) {calls[0] * 1e3:.1f} ms, replay median "
          f"{replays[len(replays) // 2] * 1e3:.2f} ms, min {replays[0] * 1e3:.2f}, max {replays[-1] * 1e3:.2f}",
          flush=True)
    s, _ = timed(lambda: gen(1))
    print(f"prefill + 1 token: {s:.3f} s", flush=True)
    s2, _ = timed(lambda: gen(129))
    print(f"129 tokens: {s2:.3f} s -> (minus prefill) {(s2 - s) / 128 * 1e3:.2f} ms/step incl. 1 eager+capture",
          flush=True)
    prefill = kernel_times(lambda: gen(1, use_graphs=False))
    all_us = sum(prefill.values())
    print(f"CUDA kernel time of the prefill: {all_us / 1e3:.1f} ms, top 8:")
    for name, us in sorted(prefill.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {us / 1e3:9.1f} ms {100 * us / all_us:5.1f}%  {name[:100]}")
    steps = 16
    print(f"CUDA kernel time of {steps} eager fused decode steps (gen {steps + 1} minus gen 1), top 30:")
    totals = [kernel_times(lambda n=n: gen(n, use_graphs=False)) for n in (1, steps + 1)]
    diff = {k: totals[1].get(k, 0.0) - totals[0].get(k, 0.0) for k in totals[1]}
    all_us = sum(diff.values())
    print(f"  total {all_us / steps / 1e3:.2f} ms/step")
    for name, us in sorted(diff.items(), key=lambda kv: -kv[1])[:30]:
        print(f"  {us / steps:9.1f} us/step {100 * us / all_us:5.1f}%  {name[:100]}")


def kernel_times(fn) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total for e in prof.key_averages() if e.device_time_total > 0}

if __name__ == "__main__":
    main()
