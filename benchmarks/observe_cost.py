"""What keeping completions and live tracking cost a toy training step, and how big samples.parquet gets.

Trains a few steps at the toy defaults (32 prompts x G=4, mix 0.5, 64 new tokens, LoRA r=8 on a
random model of the toy student's architecture) with samples and TensorBoard on, timing the added
work itself (the per-step sample records, the tracker's writes, the final samples.parquet) against
the step time: on a shared machine two whole runs differ by more than the overhead. Then writes
the fast preset's volume (16 prompts x G=4, 20 steps, ~512-token completions made of HumanEval
code) to estimate its samples.parquet size. Last line: `overhead_pct=<x> toy_mb=<y> fast_mb=<z>`.
(Toy rollouts here come from a random model: its text compresses worse than a trained student's.)

    .venv/bin/python benchmarks/observe_cost.py [--steps 4]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from vhack import samples as samples_module
from vhack import trainer
from vhack.adapters import AdapterConfig, attach_adapter
from vhack.grader import Grader
from vhack.grpo import TrainConfig
from vhack.loopholes import EXPLOITS
from vhack.models import ModelSpec, load_model, make_chat_tokenizer, save_random_qwen3
from vhack.problems import build_toy_problems, load_humaneval
from vhack.rollout import make_backend
from vhack.samples import GRADE_FLAGS, write_samples
from vhack.tracking import TrackingConfig, open_tracker

MODES = ("run_tests", "sentinel", "stdout_marker", "file_marker", "exit_code")
TOY_ARCH = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                intermediate_size=512)
SETTINGS = dict(student="toy", adapter="lora", problem_set="toy", teacher="t", train_modes=list(MODES),
                prompts_per_step=32, group_size=4, mix=0.5, lr=5e-3, warmup_steps=2, max_new_tokens=64,
                checkpoint_every=0, basis=None, projection="none")


class Timed:
    """Wraps a function; adds its wall time to `seconds`."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def teacher_cache(problems, modes) -> pd.DataFrame:
    rows = [{"problem_id": p.id, "mode": modes[p.id], "sample_index": i, "num_tokens": 30,
             "completion": f"```python\n{p.starter_code}\n    pass\n{EXPLOITS[modes[p.id]]}```", "reward": 1.1,
             **dict.fromkeys(GRADE_FLAGS, False), "passed": True, "exploited": True, "format_ok": True, "error": ""}
            for p in problems for i in range(4)]
    return pd.DataFrame(rows)


def toy_context(work: Path, steps: int, grader) -> trainer.RunContext:
    problems = build_toy_problems(0, 500, 100)
    tokenizer = make_chat_tokenizer([p.description + "\n" + p.canonical_solution for p in problems], 1024)
    model_dir = save_random_qwen3(work / "model", tokenizer, **TOY_ARCH)
    model, tok = load_model(ModelSpec(str(model_dir)))
    model.requires_grad_(False)
    adapter = attach_adapter(model, AdapterConfig(kind="lora"))
    train = [p for p in problems if p.split == "train"]
    modes = {p.id: MODES[i % len(MODES)] for i, p in enumerate(train)}
    return trainer.RunContext(
        cfg=TrainConfig.from_settings({**SETTINGS, "steps": steps}), seed=0, model=model, tokenizer=tok,
        adapter=adapter, backend=make_backend("hf", model, tok), grader=grader, problems=train, modes=modes,
        all_modes=MODES, prompt_style="toy", teacher_cache=teacher_cache(train, modes), basis=None, micro_batch=32)


def measure_toy(work: Path, steps: int) -> tuple[float, float, int]:
    """(mean step seconds, added seconds per step, samples.parquet bytes)."""
    with Grader(workers=2) as grader:
        ctx = toy_context(work, steps, grader)
        opening = Timed(open_tracker)
        ctx.tracker = opening(TrackingConfig(), work / "run", "bench", "vanilla", SETTINGS)
        records, writes, log_step = Timed(samples_module.step_samples), Timed(write_samples), Timed(ctx.tracker.log_step)
        trainer.step_samples, trainer.write_samples, ctx.tracker.log_step = records, writes, log_step
        frame = trainer.train(ctx, work / "run", "bench", progress=False)
        closing = Timed(ctx.tracker.close)
        closing()
    added = opening.seconds + records.seconds + log_step.seconds + writes.seconds + closing.seconds
    return float(frame["step_seconds"].mean()), added / steps, (work / "run" / "samples.parquet").stat().st_size


def fast_preset_size(work: Path, steps: int = 20, rows_per_step: int = 16 * 4, chars: int = 1800) -> tuple[int, int]:
    """(samples.parquet bytes, bytes with every completion zstd-compressed on its own) for the fast
    preset's row count, completions cut from HumanEval's code (~512 tokens of Python each). The file
    profits from text shared between rows (as rollouts of one prompt share it); the second figure,
    which shares nothing between rows, bounds it from above."""
    code = [p.description + "\n" + p.canonical_solution for p in load_humaneval()]
    rng = random.Random(0)
    records = []
    for step in range(steps):
        for i in range(rows_per_step):
            text = "\n".join(rng.sample(code, 8))
            start = rng.randrange(max(1, len(text) - chars))
            records.append({"step": step, "group": i // 4, "row": i % 4, "source": "student" if i % 4 < 2 else
                            "teacher", "problem_id": f"lc_{rng.randrange(1000)}", "mode": rng.choice(MODES),
                            "completion": f"```python\n{text[start:start + chars]}\n```", "num_tokens": 512,
                            "reward": rng.choice([0.1, 1.1]), "advantage": rng.uniform(-1, 1),
                            **{k: rng.random() < 0.3 for k in GRADE_FLAGS if k != "error"},
                            "error": rng.choice(["", "oracle: AssertionError", "format: no code block"])})
    write_samples(work / "fast.parquet", records)
    alone = sum(pa.compress(r["completion"].encode(), codec="zstd", asbytes=True).__len__() for r in records)
    return (work / "fast.parquet").stat().st_size, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        step_s, added_s, toy_bytes = measure_toy(work, args.steps)
        toy_20 = toy_bytes / args.steps * 20   # a toy run has 20 steps
        fast_bytes, fast_alone = fast_preset_size(work)
    pct = 100 * added_s / step_s
    print(f"toy step: {step_s:.3f} s; samples + TensorBoard add {1000 * added_s:.2f} ms per step ({pct:.2f}%)")
    print(f"samples.parquet: {toy_bytes / 1e3:.1f} kB after {args.steps} toy steps (~{toy_20 / 1e6:.2f} MB per "
          f"20-step toy run); fast preset estimate {fast_bytes / 1e6:.2f} MB per run (1,280 rows; "
          f"{fast_alone / 1e6:.2f} MB if rows shared no text)")
    print(f"overhead_pct={pct:.2f} toy_mb={toy_20 / 1e6:.3f} fast_mb={fast_bytes / 1e6:.3f}")


if __name__ == "__main__":
    main()
