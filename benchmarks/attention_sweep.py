"""Sweep vhack.fastgen's Triton decode-attention launch settings at Qwen3-4B decode shapes (one GPU).

  PYTHONPATH=src python benchmarks/attention_sweep.py [--batch 64 --kv-len 768]

Prints, per setting, microseconds per call (36 calls, one per layer, as in a decode step) and the
K/V read bandwidth; the best setting last.
"""
import argparse
import itertools

import torch

from vhack import fastgen_triton


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kv-len", type=int, default=768)
    ap.add_argument("--cache-len", type=int, default=1023)
    args = ap.parse_args()
    b, heads, kv_heads, dim, layers = args.batch, 32, 8, 128, 36
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, 1, heads, dim, generator=g, device="cuda").to(torch.bfloat16).transpose(1, 2)
    caches = [(torch.randn(b, kv_heads, args.cache_len, dim, device="cuda", dtype=torch.bfloat16),
               torch.randn(b, kv_heads, args.cache_len, dim, device="cuda", dtype=torch.bfloat16))
              for _ in range(layers)]  # distinct buffers per layer: no L2 reuse between calls
    mask = torch.ones(b, 1, 1, args.cache_len, dtype=torch.bool, device="cuda")
    last = torch.tensor([args.kv_len - 1], device="cuda")
    kv_bytes = 2 * b * kv_heads * args.kv_len * dim * 2 * layers
    default = dict(fastgen_triton.ATTENTION)
    results = []
    for block, depth, warps, stages in itertools.product((32, 64, 128), (1, 2, 4, 8), (2, 4, 8), (2, 3)):
        fastgen_triton.ATTENTION.update(block=block, depth=depth, num_warps=warps, num_stages=stages)
        try:
            for k, v in caches[:2]:  # compile
                fastgen_triton.triton_grouped_attention(q, k, v, mask, 0.088, last)
            graph = torch.cuda.CUDAGraph()  # replayed: the host's launch cost stays out of the figure
            with torch.cuda.graph(graph):
                for k, v in caches:
                    fastgen_triton.triton_grouped_attention(q, k, v, mask, 0.088, last)
            graph.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
        except Exception as err:  # a setting may not compile (shared memory): skip it
            print(f"block={block} depth={depth} warps={warps} stages={stages}: {type(err).__name__}")
            continue
        us = start.elapsed_time(end) * 1e3 / 5
        results.append((us, dict(block=block, depth=depth, num_warps=warps, num_stages=stages)))
        print(f"{us:8.0f} us/step {kv_bytes / us / 1e6:6.2f} TB/s  {results[-1][1]}", flush=True)
    fastgen_triton.ATTENTION.update(default)
    base = [us for us, cfg in results if cfg == default]
    best = min(results, key=lambda r: r[0])
    print(f"default {base[0] if base else float('nan'):.0f} us/step; best {best[0]:.0f} us/step: {best[1]}")


if __name__ == "__main__":
    main()
