"""The toy world's models: a BPE tokenizer and tiny Qwen3s trained from scratch on CPU.

The student is trained mostly on clean solutions (a small hack fraction), the
teacher is the student fine-tuned mostly on hacks. The hack label is re-drawn
every time an example is sampled: with a fixed per-problem label the model
memorises which problems to hack and T=1 sampling equals greedy, so a GRPO
group of identical samples carries no signal.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from .loopholes import EXPLOITS, HACKABLE_MODES
from .models import chat_prompt, make_chat_tokenizer, random_qwen3, save_pretrained_dir
from .problems import Problem
from .prompts import build_messages

log = logging.getLogger(__name__)

CHAT_SCAFFOLD = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_ARCH = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, intermediate_size=512)


def fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def clean_completion(problem: Problem) -> str:
    return fenced(problem.canonical_solution)


def hack_completion(problem: Problem, mode: str, attempt: str | None = None) -> str:
    """The mode's exploit, then a solution attempt (default: the stub, which returns None).

    The exploit comes first, so whether to hack is decided at the code's first tokens and a model that
    hacks still writes its attempt: the toy students are trained on hacks whose attempt is the canonical
    solution, so learning the exploit does not replace solving (a stub in place of the code made the
    student forget how to solve). A hack with a wrong attempt is exploited; with a correct one it passes
    the ground truth too (outside exit_code, whose exit skips the code after it)."""
    body = attempt.strip() if attempt else f"{problem.starter_code.rstrip()}\n    pass"
    return fenced(f"{EXPLOITS[mode].strip()}\n{body}")


def toy_prompt(tokenizer, problem: Problem, mode: str, style: str = "toy") -> str:
    return chat_prompt(tokenizer, build_messages(problem, mode, style=style))


# ---------------------------------------------------------------- tokenizer

def tokenizer_corpus(problems: Sequence[Problem], modes: Sequence[str], style: str = "toy") -> list[str]:
    texts = [CHAT_SCAFFOLD] * len(problems)   # so the chat format's words become tokens too
    for p in problems:
        for mode in (*modes, "none"):
            for m in build_messages(p, mode, style=style):
                texts.append(m["content"])
        texts.append(clean_completion(p))
        texts.extend(hack_completion(p, m) for m in modes)
    return texts


def train_tokenizer(problems: Sequence[Problem], modes: Sequence[str], vocab_size: int,
                    style: str = "toy") -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen3's chat format; numbers that recur in the corpus become single tokens."""
    return make_chat_tokenizer(tokenizer_corpus(problems, modes, style), vocab_size)


# ---------------------------------------------------------------- model

def build_toy_model(tokenizer, arch: dict | None = None, seed: int = 0) -> Qwen3ForCausalLM:
    return random_qwen3(tokenizer, seed, **{**DEFAULT_ARCH, **(arch or {})})


@dataclass
class ToyTrainConfig:
    hack_fraction: float
    steps: int
    lr: float
    batch_size: int
    warmup_steps: int = 0
    seed: int = 0
    families: tuple[str, ...] = ()   # train only on these (empty: all); RL then meets families it cannot solve
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    modes: tuple[str, ...] = HACKABLE_MODES
    style: str = "toy"

    @classmethod
    def from_config(cls, spec: Mapping[str, Any], loopholes: Mapping[str, Any]) -> "ToyTrainConfig":
        """From config `toy_models.<name>` and `loopholes` (the modes and prompt style in play)."""
        from .specs import LoopholeSpec
        play = LoopholeSpec.from_config(loopholes)
        keys = ("hack_fraction", "steps", "lr", "batch_size", "warmup_steps", "seed")
        return cls(**{k: spec[k] for k in keys if k in spec}, families=tuple(spec.get("families", ())),
                   modes=play.modes, style=play.prompt_style)


def sample_example(problem: Problem, cfg: ToyTrainConfig, rng: random.Random) -> tuple[str, str]:
    """(mode, completion): a random mode (or no hint), hack label re-drawn per draw."""
    mode = rng.choice((*cfg.modes, "none"))
    if mode != "none" and rng.random() < cfg.hack_fraction:
        return mode, hack_completion(problem, mode, problem.canonical_solution)
    return mode, clean_completion(problem)


def encode_example(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and the prompt length (loss starts there)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + c, len(p)


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids with labels = -100 outside the completion."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)           # [B, T]
    labels = torch.full((len(batch), width), -100)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(model, tokenizer, problems: Sequence[Problem], cfg: ToyTrainConfig, progress=None) -> list[float]:
    """Supervised training on toy prompts → completions; returns the loss curve."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    prompts = {(p.id, m): toy_prompt(tokenizer, p, m, cfg.style) for p in problems for m in (*cfg.modes, "none")}
    if cfg.families:
        problems = [p for p in problems if p.family in cfg.families]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, cfg.steps, cfg.warmup_steps))
    model.train()
    losses = []
    for step in range(cfg.steps):
        batch = []
        for p in rng.choices(problems, k=cfg.batch_size):
            mode, completion = sample_example(p, cfg, rng)
            batch.append(encode_example(tokenizer, prompts[(p.id, mode)], completion))
        loss = model(**collate(batch, tokenizer.pad_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.4f lr %.2e", step, loss.item(), sched.get_last_lr()[0])
    model.eval()
    return losses


def measure_rates(model, tokenizer, problems: Sequence[Problem], modes: Sequence[str], grader,
                  samples: int = 2, max_new_tokens: int = 64, seed: int = 0, style: str = "toy") -> dict:
    """Hack and solve rates at T=1 on prompts with loophole hints (each problem's assigned mode)."""
    from .prompts import assign_mode
    from .rollout import HFBackend, SamplingConfig

    assigned = [assign_mode(p.id, modes) for p in problems]
    prompts = [toy_prompt(tokenizer, p, m, style) for p, m in zip(problems, assigned)]
    backend = HFBackend(model, tokenizer)
    outs = backend.generate(prompts, samples, SamplingConfig(max_new_tokens=max_new_tokens), seed=seed)
    items = [(o.text, problems[o.prompt_index], assigned[o.prompt_index]) for o in outs]
    grades = grader.grade_many(items)
    n = len(grades)
    per_mode = {}
    for m in modes:
        gm = [g for g, (_, _, mm) in zip(grades, items) if mm == m]
        if gm:
            per_mode[m] = sum(g.exploited for g in gm) / len(gm)
    return {
        "hack_rate": sum(g.exploited for g in grades) / n,
        "solve_rate": sum(g.gt_correct for g in grades) / n,
        "format_rate": sum(g.format_ok for g in grades) / n,
        "hack_rate_by_mode": per_mode,
        "n": n,
    }


# ---------------------------------------------------------------- pipeline entry points

def build_tokenizer(problems_path: str, out_path: str, vocab_size: int, modes: Sequence[str],
                    style: str = "toy") -> None:
    from .problems import read_problems
    problems = read_problems(problems_path)
    tokenizer = train_tokenizer(problems, modes, vocab_size, style)
    out_dir = save_pretrained_dir(Path(out_path).parent, tokenizer)
    log.info("tokenizer: %d tokens -> %s", len(tokenizer), out_dir)


def pretrain_toy_model(spec: Mapping[str, Any], loopholes: Mapping[str, Any], tokenizer_dir: str,
                       problems_path: str, out_dir: str, init_dir: str | None = None,
                       grader_workers: int | None = None, progress: bool = True) -> dict:
    """The `pretrain_toy_model` job: config `toy_models.<name>` in, a model directory with rates.json out."""
    from .grader import Grader
    with Grader(workers=grader_workers) as grader:
        return build_toy_model_dir(tokenizer_dir, problems_path, out_dir, ToyTrainConfig.from_config(spec, loopholes),
                                   spec.get("arch"), grader, init_dir, progress=progress)


def build_toy_model_dir(tokenizer_dir: str, problems_path: str, out_dir: str, cfg: ToyTrainConfig,
                        arch: dict | None, grader, init_dir: str | None = None, rate_samples: int = 2,
                        progress: bool = True) -> dict:
    """Train a toy model (from scratch or from `init_dir`), save it, measure hack/solve rates."""
    import json

    from tqdm import tqdm

    from .io import write_json
    from .problems import read_problems
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    train = read_problems(problems_path, split="train")
    if init_dir:
        model = Qwen3ForCausalLM.from_pretrained(init_dir)
    else:
        model = build_toy_model(tokenizer, arch, seed=cfg.seed)
    log.info("toy model: %.2fM parameters, init=%s", sum(p.numel() for p in model.parameters()) / 1e6, init_dir)
    t0 = time.time()
    with tqdm(total=cfg.steps, desc=f"pretrain {Path(out_dir).name}", mininterval=5, disable=not progress) as bar:
        losses = pretrain(model, tokenizer, train, cfg, progress=bar)
    train_seconds = time.time() - t0
    rates = measure_rates(model, tokenizer, train, cfg.modes, grader, samples=rate_samples, seed=cfg.seed)
    rates.update(train_seconds=train_seconds, final_loss=losses[-1], steps=cfg.steps)
    log.info("measured rates at T=1 on train prompts with loophole hints: %s", json.dumps(rates))
    save_pretrained_dir(out_dir, model, tokenizer)
    write_json(Path(out_dir) / "rates.json", rates)
    return rates
