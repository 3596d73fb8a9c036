"""TRL's GRPOTrainer at the fast preset's sizes on the same random-weight Qwen3-4B as gpu_step.py.

  PYTHONPATH=src:<trl wheels dir> python benchmarks/trl_step.py           # one H100/H200 (~4 min)
  PYTHONPATH=src:<trl wheels dir> python benchmarks/trl_step.py --tiny    # 2-layer model on CPU: checks the script

The comparison DOMAIN.md anchors on: 16 prompts (the same ~512-token prompts gpu_step.py builds) x G=4,
512 new tokens (random weights never stop early), micro-batch 4 with 16 accumulation steps = one
optimizer step per 64 rows, LoRA r=32 on every Linear, HF generate, TRL's own defaults otherwise
(gradient checkpointing on, beta 0). The reward is a cheap function of the text (GRPO's cost does not
depend on it). No network: TRL and its few missing dependencies come as wheels (README).
Last line: `trl_step_s=<s> trl_peak_gb=<g>` (the last step's wall time; peak allocated over the run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import (MODES, PAIRS, QWEN3_4B, TINY, TINY_SIZES, Sizes, build_model, build_tokenizer,  # noqa: E402
                      long_prompts, peak_gb, sync, toy_problems)
from vhack.io import write_json  # noqa: E402
from vhack.pairs import load_pair_set  # noqa: E402


def text_reward(completions, **_) -> list[float]:
    return [float(sum(map(ord, c)) % 7) for c in completions]  # varies with the text: groups get advantages


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between optimizer steps (generation, rewards, forward/backward, optimizer)."""

        def __init__(self):
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.marks.append(time.perf_counter())
            print(f"trl step {len(self.marks) - 1}: {self.marks[-1] - self.marks[-2]:.2f} s, "
                  f"peak {peak_gb():.1f} GiB", flush=True)

    return StepTimer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="output dir (default $OUT, else benchmarks/out)")
    args = parser.parse_args()
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    sizes = TINY_SIZES if args.tiny else Sizes()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pairs = list(load_pair_set(PAIRS).pairs)[: sizes.n_pairs]
    tokenizer = build_tokenizer(pairs)
    model = build_model(TINY if args.tiny else QWEN3_4B, tokenizer, device,
                        torch.bfloat16 if device.type == "cuda" else torch.float32)
    problems = toy_problems()[: sizes.prompts_per_step]
    modes = {p.id: MODES[i % len(MODES)] for i, p in enumerate(problems)}
    prompts = list(long_prompts(tokenizer, problems, modes, sizes.prompt_tokens).values())
    dataset = Dataset.from_list([{"prompt": text} for text in prompts] * (args.steps + 1))
    accumulation = sizes.prompts_per_step * sizes.group_size // sizes.micro_batch
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=sizes.micro_batch,
            gradient_accumulation_steps=accumulation, num_generations=sizes.group_size,
            max_completion_length=sizes.max_new_tokens, temperature=1.0, learning_rate=1e-3, beta=0.0,
            bf16=device.type == "cuda", use_cpu=device.type == "cpu", logging_steps=1, save_strategy="no",
            report_to=[], seed=0, dataloader_num_workers=0, shuffle_dataset=False)
        timer = step_timer()
        trainer = GRPOTrainer(model=model, reward_funcs=text_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer],
                              peft_config=LoraConfig(r=32, lora_alpha=64, target_modules="all-linear"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    steps = [b - a for a, b in zip(timer.marks, timer.marks[1:])]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "trl": trl.__version__, "step_seconds": steps,
               "trl_step_s": steps[-1] if steps else math.nan, "trl_peak_gb": peak_gb(),
               "rows_per_step": sizes.prompts_per_step * sizes.group_size, "micro_batch": sizes.micro_batch,
               "gradient_checkpointing": config.gradient_checkpointing, "max_completion_length": sizes.max_new_tokens}
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).resolve().parent / "out")
    write_json(out_dir / "trl_step.json", results)
    print(f"device: {results['device']}  trl {trl.__version__}  gradient checkpointing "
          f"{config.gradient_checkpointing}")
    print(f"trl_step_s={results['trl_step_s']:.2f} trl_peak_gb={results['trl_peak_gb']:.1f}", flush=True)


if __name__ == "__main__":
    main()
