import pytest
import torch

from vhack.adapters import AdapterConfig, attach_adapter
from vhack.models import ModelSpec, chat_prompt, load_model, resolve_dtype, weight_hash


def test_load_model_defaults_to_fp32_on_cpu_with_distinct_pad(tiny_qwen3):
    model, tokenizer = load_model(ModelSpec(str(tiny_qwen3), device="cpu"))
    assert model.dtype == torch.float32
    assert not model.training
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_load_model_adds_pad_when_it_equals_eos(tiny_qwen3, tmp_path):
    model, tokenizer = load_model(ModelSpec(str(tiny_qwen3)))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    model, tokenizer = load_model(ModelSpec(str(tmp_path)))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)


def test_load_model_offline_names_the_missing_model():
    with pytest.raises(OSError, match="no-such-org/no-such-model"):
        load_model(ModelSpec("no-such-org/no-such-model", offline=True))


def test_load_model_merges_a_lora_adapter(tiny_qwen3, tmp_path):
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="lora", targets=("q_proj", "down_proj")))
    torch.manual_seed(0)
    for view in adapter.flat_params().values():
        view.normal_(0, 0.05)
    adapter.save_peft(tmp_path / "lora")
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        expected = model(ids).logits
    teacher, _ = load_model(ModelSpec(str(tiny_qwen3), adapter=str(tmp_path / "lora")))
    assert "lora" not in " ".join(n for n, _ in teacher.named_parameters())  # merged, plain HF model
    with torch.no_grad():
        torch.testing.assert_close(teacher(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_resolve_dtype_rejects_unknown_names():
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="ModelSpec.dtype"):
        resolve_dtype("float99", torch.device("cpu"))


def test_chat_prompt_ends_at_the_assistant_turn(tiny_qwen3):
    _, tokenizer = load_model(ModelSpec(str(tiny_qwen3)))
    messages = [{"role": "user", "content": "Write add_k."}]
    prompt = chat_prompt(tokenizer, messages)
    assert prompt.startswith("<|im_start|>user\nWrite add_k.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert chat_prompt(tokenizer, messages, enable_thinking=True).endswith("<|im_start|>assistant\n")


def test_weight_hash_is_stable_ignores_adapters_and_sees_weight_changes(tiny_qwen3):
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    reloaded, _ = load_model(ModelSpec(str(tiny_qwen3)))
    base_hash = weight_hash(model)
    assert weight_hash(reloaded) == base_hash
    attach_adapter(reloaded, AdapterConfig(kind="lora"))
    assert weight_hash(reloaded) == base_hash
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    assert weight_hash(model) != base_hash


@pytest.mark.parametrize("layers, recomputed", [(None, {0, 1, 2, 3}), (1, {0}), (0, set())])
def test_checkpointing_the_first_layers_recomputes_only_those(tiny_qwen3, layers, recomputed):
    from vhack.grpo import token_logprobs
    from vhack.models import enable_gradient_checkpointing
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="lora", lora_rank=4, lora_b_init_std=0.02))
    ids = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(0))

    def grads_and_calls():
        calls = []
        hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
                 for i, layer in enumerate(model.model.layers)]
        for p in adapter.params.values():
            p.grad = None
        token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()
        for h in hooks:
            h.remove()
        return torch.cat([p.grad.view(-1) for p in adapter.params.values()]), calls

    model.train()
    plain, plain_calls = grads_and_calls()
    assert model.config.num_hidden_layers == 4 and plain_calls == [0, 1, 2, 3]
    assert enable_gradient_checkpointing(model, layers) == len(recomputed)
    model.train()
    grads, calls = grads_and_calls()
    assert {i for i in calls if calls.count(i) == 2} == recomputed     # a checkpointed layer runs forward twice
    torch.testing.assert_close(grads, plain)
