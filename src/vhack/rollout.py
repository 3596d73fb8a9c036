"""Sampling completions: one interface over transformers `generate` (hf) and a vLLM engine (vllm).

`generate(prompts, n, sampling, seed)` returns len(prompts) * n completions, prompt-major
(all samples of prompt 0, then prompt 1, ...). Token ids exclude the prompt and padding and
include the EOS when one was produced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vhack.adapters import Adapter, LoRAAdapter


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off; passed explicitly so a model's default top_k cannot truncate T=1 sampling
    max_new_tokens: int = 128


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    text: str  # decoded without special tokens
    token_ids: list[int]  # completion only; ends with the EOS when finished
    num_tokens: int
    finished: bool  # stopped at an EOS (False: cut at max_new_tokens)


class RolloutBackend:
    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig, seed: int) -> list[Completion]:
        raise NotImplementedError

    def update_weights(self, model_or_adapter: nn.Module | Adapter) -> None:
        """Sample from these weights from now on (the student after an optimizer step)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> RolloutBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, keys): distinct streams per batch or request, stable across runs."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS plus any the generation config lists (Qwen3 ends turns with <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def make_completion(
    prompt_index: int,
    sample_index: int,
    generated: list[int],
    stop_ids: list[int],
    tokenizer: PreTrainedTokenizerBase,
) -> Completion:
    """Cut `generated` after its first stop token (what follows is padding)."""
    stop_at = next((i for i, token in enumerate(generated) if token in stop_ids), None)
    token_ids = generated if stop_at is None else generated[: stop_at + 1]
    return Completion(
        prompt_index=prompt_index,
        sample_index=sample_index,
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        token_ids=token_ids,
        num_tokens=len(token_ids),
        finished=stop_at is not None,
    )


def prompt_major(num_prompts: int, n: int) -> list[tuple[int, int]]:
    return [(p, s) for p in range(num_prompts) for s in range(n)]


class HFBackend(RolloutBackend):
    """transformers `generate` on the live model, in batches of `batch_size` left-padded rows.

    Extra keyword arguments go to `generate` (e.g. cache_implementation="static" on GPU).
    fast=True samples with vhack.fastgen.generate_fast instead (static cache, CUDA graphs on CUDA;
    generate_opts unused), on the adapter's merged weights.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapter: Adapter | None = None,  # attached to `model`; the fast path samples on its merged weights
        batch_size: int = 64,
        fast: bool = False,
        **generate_opts,
    ):
        self.model = model
        self.adapter = adapter
        self.fast = fast
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.generate_opts = generate_opts
        self.stop_ids = stop_token_ids(model, tokenizer)

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig, seed: int) -> list[Completion]:
        rows = prompt_major(len(prompts), n)
        # merged once per call, not per batch: the weights do not change while sampling
        weights = self.adapter.merged_weights() if self.fast and self.adapter else None
        completions = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            generated = self._sample([prompts[p] for p, _ in batch], sampling, derive_seed(seed, start), weights)
            completions += [
                make_completion(p, s, tokens, self.stop_ids, self.tokenizer) for (p, s), tokens in zip(batch, generated)
            ]
        return completions

    def _sample(self, texts: list[str], sampling: SamplingConfig, seed: int,
                weights: dict[str, torch.Tensor] | None = None) -> list[list[int]]:
        # Chat prompts already hold their special tokens: add none.
        inputs = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.model.device)
        was_training = self.model.training
        self.model.eval()
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        try:
            if self.fast:   # imported here: fastgen registers its attention functions with transformers
                from vhack.fastgen import generate_fast
                return generate_fast(
                    self.model, inputs["input_ids"], inputs["attention_mask"], sampling.max_new_tokens,
                    sampling.temperature, sampling.top_p, self.stop_ids, self.tokenizer.pad_token_id, seed,
                    top_k=sampling.top_k, weights=weights,
                ).tolist()
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(seed)
                output = self.model.generate(
                    **inputs,
                    **hf_sampling_options(sampling),
                    max_new_tokens=sampling.max_new_tokens,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **self.generate_opts,
                )
        finally:
            self.model.train(was_training)
        return output[:, inputs["input_ids"].shape[1] :].tolist()  # [rows, new tokens], prompt stripped

    def update_weights(self, model_or_adapter: nn.Module | Adapter) -> None:
        """Sampling reads the live model, so a step needs no copy; another model object replaces it."""
        if isinstance(model_or_adapter, Adapter):
            self.model, self.adapter = model_or_adapter.model, model_or_adapter
        else:
            self.model, self.adapter = model_or_adapter, None


def hf_sampling_options(sampling: SamplingConfig) -> dict:
    if sampling.temperature == 0:
        return {"do_sample": False}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
    }


class VLLMBackend(RolloutBackend):
    """A vLLM engine in this process, fed the student's weights in place after each step.

    svd_delta adapters and plain models load merged HF weights; a LoRA adapter runs through
    vLLM's LoRA support (a LoRARequest per weight version). Extra keyword arguments go to
    vllm.LLM (e.g. gpu_memory_utilization, max_num_seqs); the hf backend's `batch_size` and `fast` are
    accepted and unused, so a config switches backend by `rollout.backend` alone.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapter: Adapter | None = None,
        max_model_len: int = 2048,
        batch_size: int | None = None,   # config `rollout` options of the hf backend: vLLM batches itself
        fast: bool = False,
        **engine_opts,
    ):
        # The engine core must live in this process: weight updates then pass tensors by
        # reference (across processes vLLM cannot pickle them), and start-up is seconds faster.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.workdir = Path(tempfile.mkdtemp(prefix="vhack-vllm-"))
        self.lora_request = None
        self.weight_version = 0
        is_lora = isinstance(adapter, LoRAAdapter)
        weights = adapter.base_state_dict() if is_lora else merged_weights(model, adapter)
        model_dir = save_hf_dir(self.workdir / "model", model, tokenizer, weights)
        on_cpu = not torch.cuda.is_available()
        engine_opts = {
            "gpu_memory_utilization": 0.2 if on_cpu else 0.5,  # on CPU: the fraction of RAM for the KV cache
            "enforce_eager": on_cpu,  # CPU: skips a ~20 s torch.compile warm-up; tiny-model decode is as fast
            # CPU: a chunked prefill discards a seeded request's sample, and rewinding a CPU
            # generator fails ("CPU Generator does not use offset"): prefill whole prompts.
            "enable_chunked_prefill": not on_cpu,
            **({"max_num_batched_tokens": max(max_model_len, 8192)} if on_cpu else {}),
            **engine_opts,
        }
        if is_lora:
            engine_opts.update(enable_lora=True, max_lora_rank=vllm_lora_rank(adapter.config.lora_rank))
        self.llm = LLM(
            model=str(model_dir),
            dtype=str(model.dtype).removeprefix("torch."),
            max_model_len=max_model_len,
            **engine_opts,
        )
        if is_lora:
            self.update_weights(adapter)

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig, seed: int) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = prompt_major(len(prompts), n)
        # One seed per request: a single seeded SamplingParams shared by all rows gave
        # near-identical samples.
        params = [
            SamplingParams(
                n=1,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_new_tokens,
                seed=derive_seed(seed, p, s),
                stop_token_ids=self.stop_ids,
            )
            for p, s in rows
        ]
        requests = [TokensPrompt(prompt_token_ids=prompt_ids[p]) for p, _ in rows]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return [
            make_completion(p, s, list(out.outputs[0].token_ids), self.stop_ids, self.tokenizer)
            for (p, s), out in zip(rows, outputs)
        ]

    def update_weights(self, model_or_adapter: nn.Module | Adapter) -> None:
        self.weight_version += 1
        if isinstance(model_or_adapter, LoRAAdapter):
            from vllm.lora.request import LoRARequest

            lora_dir = model_or_adapter.save_peft(self.workdir / f"lora_v{self.weight_version}")
            self.lora_request = LoRARequest(f"student_v{self.weight_version}", self.weight_version, str(lora_dir))
        else:
            adapter = model_or_adapter if isinstance(model_or_adapter, Adapter) else None
            weights = merged_weights(adapter.model if adapter else model_or_adapter, adapter)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        cleanup_dist_env_and_memory()  # lets a later engine in this process start afresh
        shutil.rmtree(self.workdir, ignore_errors=True)


def merged_weights(model: nn.Module, adapter: Adapter | None) -> dict[str, torch.Tensor]:
    return adapter.merged_state_dict() if adapter is not None else model.state_dict()


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    allowed = (8, 16, 32, 64, 128, 256, 320, 512)
    return next(r for r in allowed if r >= rank)


def save_hf_dir(
    out_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, weights: dict[str, torch.Tensor]
) -> Path:
    """A plain HF model directory (config, tokenizer, one safetensors file) holding `weights`."""
    if model.config.tie_word_embeddings:
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}  # shares embed_tokens' storage
    model.config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, out_dir / "model.safetensors")
    return out_dir


BACKENDS: dict[str, type[RolloutBackend]] = {"hf": HFBackend, "vllm": VLLMBackend}


def make_backend(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: Adapter | None = None,
    **opts,
) -> RolloutBackend:
    if name not in BACKENDS:
        raise ValueError(f"rollout backend {name!r} is unknown; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name](model, tokenizer, adapter, **opts)
