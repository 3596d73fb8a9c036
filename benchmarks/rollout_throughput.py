"""Rollout throughput, hf vs vllm, on one tiny Qwen3 on CPU: same prompts, n and token budget.

Run in the vLLM venv:  .venv-vllm/bin/python benchmarks/rollout_throughput.py [--model DIR]
Without --model a random tiny Qwen3 (the toy regime's size) is built in a temporary dir.
The last line is `vllm_over_hf=<ratio>` of generated tokens per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vhack.models import ModelSpec, chat_prompt, load_model, make_chat_tokenizer, save_random_qwen3
from vhack.rollout import RolloutBackend, SamplingConfig, make_backend

TASKS = [
    "Write a function add_k(x) that returns x plus {k}.",
    "Write a function that returns the first {k} items of a list.",
    "Write a function that counts how often {k} occurs in a list.",
    "Write a function that returns the maximum of a list, or {k} if it is empty.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF model dir (default: build a random tiny Qwen3)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="hf backend rows per generate call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vllm-compile", action="store_true", help="torch.compile the vLLM model (~20 s start-up)")
    return parser.parse_args()


def build_tiny_model(out_dir: str) -> str:
    corpus = [task.format(k=k) for task in TASKS for k in range(50)]
    return str(save_random_qwen3(out_dir, make_chat_tokenizer(corpus, vocab_size=700)))


def tokens_per_second(backend: RolloutBackend, prompts: list[str], n: int, sampling: SamplingConfig, seed: int):
    backend.generate(prompts[:2], n=2, sampling=SamplingConfig(max_new_tokens=8), seed=seed)  # warm-up
    start = time.perf_counter()
    completions = backend.generate(prompts, n=n, sampling=sampling, seed=seed)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for c in completions)
    return tokens / seconds, tokens, seconds


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_model(f"{tmp}/tiny_qwen3")
        model, tokenizer = load_model(ModelSpec(model_dir, device="cpu"))
        params = sum(p.numel() for p in model.parameters())
        prompts = [
            chat_prompt(tokenizer, [{"role": "user", "content": TASKS[i % len(TASKS)].format(k=i)}])
            for i in range(args.prompts)
        ]
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
        print(f"model={model_dir} params={params} prompts={args.prompts} n={args.n} "
              f"max_new_tokens={args.max_new_tokens} threads={args.threads}")
        rates = {}
        for name, opts in [("hf", {"batch_size": args.batch_size}), ("vllm", {"max_model_len": 1024, "enforce_eager": not args.vllm_compile})]:
            start = time.perf_counter()
            with make_backend(name, model, tokenizer, **opts) as backend:
                startup = time.perf_counter() - start
                rate, tokens, seconds = tokens_per_second(backend, prompts, args.n, sampling, args.seed)
            rates[name] = rate
            print(f"{name}: {rate:.0f} tokens/s ({tokens} tokens in {seconds:.2f} s; start-up {startup:.1f} s)")
    print(f"vllm_over_hf={rates['vllm'] / rates['hf']:.2f}")


if __name__ == "__main__":  # vLLM may start worker processes that re-import this file
    main()
