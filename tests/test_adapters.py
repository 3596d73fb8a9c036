import pytest
import torch

from vhack.adapters import AdapterConfig, attach_adapter, load_adapter, read_adapter_metadata
from vhack.models import ModelSpec, load_model

KINDS = ["svd_delta", "lora"]
IDS = torch.tensor([[5, 17, 42, 99, 7, 3], [8, 1, 250, 64, 33, 2]])  # [batch, tokens]


def fresh_model(path):
    model, _ = load_model(ModelSpec(str(path)))
    return model


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def train_one_step(model, adapter, lr=1e-2):
    optimizer = torch.optim.AdamW(adapter.params.values(), lr=lr)
    model(IDS, labels=IDS).loss.backward()
    optimizer.step()


def randomize(adapter, seed=0, scale=0.05):
    generator = torch.Generator().manual_seed(seed)
    for view in adapter.flat_params().values():
        view.copy_(torch.randn(view.shape, generator=generator) * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapter_is_bit_identical_to_the_base_model(tiny_qwen3, kind):
    model = fresh_model(tiny_qwen3)
    base = logits(model)
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    assert torch.equal(logits(model), base)
    assert torch.equal(model(IDS).logits.detach(), base)  # with grad enabled too
    randomize(adapter)
    assert not torch.equal(logits(model), base)
    with adapter.disabled():
        assert torch.equal(logits(model), base)
    if kind == "svd_delta":  # writing zeros through the views restores the identity
        for view in adapter.flat_params().values():
            view.zero_()
        assert torch.equal(logits(model), base)


def test_svd_delta_sizes_and_names(tiny_qwen3):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    config = model.config
    assert len(adapter.module_names) == 7 * config.num_hidden_layers
    sizes = adapter.module_sizes()
    assert sizes["model.layers.0.self_attn.q_proj"] == min(config.hidden_size, config.num_attention_heads * 32)
    assert sizes["model.layers.0.mlp.down_proj"] == min(config.hidden_size, config.intermediate_size)
    assert adapter.num_params == sum(sizes.values())


def test_lora_modules_are_the_a_and_b_weights(tiny_qwen3):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind="lora", lora_rank=4, targets=("q_proj",)))
    names = adapter.module_names
    assert names[:2] == ["model.layers.0.self_attn.q_proj.lora_A", "model.layers.0.self_attn.q_proj.lora_B"]
    assert adapter.module_sizes()[names[0]] == 4 * model.config.hidden_size
    assert all(not view.any() for name, view in adapter.flat_params().items() if name.endswith("lora_B"))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_flows_only_into_the_adapter(tiny_qwen3, kind):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    trainable = {id(p) for p in adapter.params.values()}
    model(IDS, labels=IDS).loss.backward()
    assert all(p.grad is None for p in model.parameters() if id(p) not in trainable)
    grads = adapter.flat_grads()
    assert all(p.requires_grad for p in adapter.params.values())
    if kind == "svd_delta":
        assert all(g.abs().sum() > 0 for g in grads.values())
    else:  # B = 0: the gradient w.r.t. A is zero at step 0, only B moves
        assert all((g.abs().sum() > 0) == name.endswith("lora_B") for name, g in grads.items())


@pytest.mark.parametrize("kind", KINDS)
def test_flat_views_share_storage(tiny_qwen3, kind):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    name = adapter.module_names[1]
    adapter.flat_params()[name][0] = 0.25
    assert adapter.params[name].view(-1)[0].item() == 0.25
    model(IDS, labels=IDS).loss.backward()
    grads = adapter.flat_grads()
    grads[name].mul_(0.0)  # e.g. a projection edits the gradient in place
    assert not adapter.params[name].grad.any()
    assert grads[name].data_ptr() == adapter.params[name].grad.data_ptr()
    adapter.zero_()
    assert all(not g.any() for g in adapter.flat_grads().values())
    assert adapter.flat_grads()[name].data_ptr() == grads[name].data_ptr()  # zeroed in place


@pytest.mark.parametrize("kind", KINDS)
def test_one_adamw_step_changes_the_output(tiny_qwen3, kind):
    model = fresh_model(tiny_qwen3)
    base = logits(model)
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    loss_before = model(IDS, labels=IDS).loss.item()
    train_one_step(model, adapter)
    assert not torch.equal(logits(model), base)
    assert model(IDS, labels=IDS).loss.item() < loss_before
    with adapter.disabled():
        assert torch.equal(logits(model), base)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_adapter_reloads_exactly(tiny_qwen3, tmp_path, kind):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind=kind, targets=("q_proj", "up_proj")))
    randomize(adapter)
    expected = logits(model)
    adapter.save(tmp_path / "adapter.safetensors")
    meta = read_adapter_metadata(tmp_path / "adapter.safetensors")
    assert meta["kind"] == kind and meta["config"]["targets"] == ["q_proj", "up_proj"]
    assert meta["sizes"] == adapter.module_sizes()

    reloaded = load_adapter(fresh_model(tiny_qwen3), tmp_path / "adapter.safetensors")
    for name, tensor in adapter.state_dict().items():
        assert torch.equal(reloaded.params[name].detach(), tensor)
    assert torch.equal(logits(reloaded.model), expected)


def test_load_rejects_an_adapter_of_another_shape(tiny_qwen3, tmp_path):
    adapter = attach_adapter(fresh_model(tiny_qwen3), AdapterConfig(targets=("q_proj",)))
    adapter.save(tmp_path / "a.safetensors")
    other = attach_adapter(fresh_model(tiny_qwen3), AdapterConfig(targets=("up_proj",)))
    with pytest.raises(ValueError, match="load_adapter"):
        other.load(tmp_path / "a.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_merged_state_dict_reproduces_the_adapted_forward(tiny_qwen3, kind):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    randomize(adapter)
    expected = logits(model)
    merged = adapter.merged_state_dict()
    plain = fresh_model(tiny_qwen3)
    assert set(merged) == set(plain.state_dict())  # plain HF names
    plain.load_state_dict(merged)
    torch.testing.assert_close(logits(plain), expected, rtol=1e-5, atol=1e-5)


def test_svd_factors_come_from_the_cache_the_second_time(tiny_qwen3, tmp_path, monkeypatch):
    config = AdapterConfig(targets=("o_proj",), svd_cache_dir=str(tmp_path / "svd"))
    first = attach_adapter(fresh_model(tiny_qwen3), config)
    assert len(list((tmp_path / "svd").glob("svd_*.safetensors"))) == len(first.module_names)

    def no_svd(*args, **kwargs):
        raise AssertionError("SVD recomputed despite the cache")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    second = attach_adapter(fresh_model(tiny_qwen3), config)
    for name, (u, vt) in first.factors.items():
        assert torch.equal(second.factors[name][0], u) and torch.equal(second.factors[name][1], vt)


def test_svd_factors_reconstruct_the_weight(tiny_qwen3):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(targets=("gate_proj",)))
    name = adapter.module_names[0]
    u, vt = adapter.factors[name]
    singular_values = torch.linalg.svdvals(adapter.linears[name].weight)
    torch.testing.assert_close((u * singular_values) @ vt, adapter.linears[name].weight, rtol=1e-4, atol=1e-5)


def test_unknown_kind_names_the_choices(tiny_qwen3):
    with pytest.raises(ValueError, match="svd_delta"):
        attach_adapter(fresh_model(tiny_qwen3), AdapterConfig(kind="ia3"))


def test_lora_init_is_fixed_by_its_seed_not_by_the_global_rng(tiny_qwen3):
    """A LoRA-space basis is only meaningful for the A it was extracted with: runs must share it."""
    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.models import ModelSpec, load_model

    def lora_a(global_seed, init_seed):
        torch.manual_seed(global_seed)
        model, _ = load_model(ModelSpec(str(tiny_qwen3)))
        adapter = attach_adapter(model, AdapterConfig(kind="lora", init_seed=init_seed))
        return {n: p.detach().clone() for n, p in adapter.params.items() if n.endswith("lora_A")}

    first, other_global, other_init = lora_a(1, 0), lora_a(2, 0), lora_a(1, 1)
    assert all(torch.equal(first[n], other_global[n]) for n in first)
    assert not all(torch.equal(first[n], other_init[n]) for n in first)


def test_trained_lora_loads_with_plain_peft_from_pretrained(tiny_qwen3, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind="lora"))
    for _ in range(3):   # B leaves 0: the adapter changes the output
        train_one_step(model, adapter)
    expected = logits(model)
    adapter.save(tmp_path / "adapter.safetensors")
    adapter.save_peft(tmp_path)   # beside the vhack file, as in a run directory
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob(".peft.*"))   # the temporary directory is gone
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    assert not torch.allclose(logits(base), expected, atol=1e-4)
    peft_model = PeftModel.from_pretrained(base, tmp_path)
    torch.testing.assert_close(logits(peft_model), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [3, 200])  # 3: δS's gradient per token; 200: through the weight gradient
def test_delta_linear_gradients_match_the_unmerged_form(tokens):
    import torch.nn.functional as F

    from vhack.adapters import DeltaLinear
    g = torch.Generator().manual_seed(tokens)
    n_out, n_in, r = 12, 8, 8
    w, u, vt = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((n_out, n_in), (n_out, r), (r, n_in)))
    s = torch.randn(r, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, tokens, n_in, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.linear(x, w) + F.linear(F.linear(x, vt) * s, u)          # W x + U (δS ⊙ Vᵀ x)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_dx, ref_ds = torch.autograd.grad(ref, (x, s), grad_out)
    y = DeltaLinear.apply(x, w + (u * s.detach()) @ vt, u, vt, s)
    dx, ds = torch.autograd.grad(y, (x, s), grad_out)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(dx, ref_dx)
    torch.testing.assert_close(ds, ref_ds)


def test_svd_delta_under_gradient_checkpointing_gives_the_same_gradient(tiny_qwen3):
    grads = []
    for checkpointing in (False, True):
        model = fresh_model(tiny_qwen3)
        adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
        randomize(adapter)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(IDS, labels=IDS).loss.backward()
        grads.append(torch.cat([p.grad.view(-1) for p in adapter.params.values()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_delta_linear_in_bf16_on_cuda_is_close_to_float64():
    from vhack.adapters import DeltaLinear
    g = torch.Generator(device="cuda").manual_seed(0)
    n_out, n_in, tokens = 384, 256, 4096
    w = torch.randn(n_out, n_in, device="cuda", generator=g, dtype=torch.float64) / 16
    u, _, vt = torch.linalg.svd(w, full_matrices=False)
    s = torch.randn(n_in, device="cuda", generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(tokens, n_in, device="cuda", generator=g, dtype=torch.float64)
    grad_out = torch.randn(tokens, n_out, device="cuda", generator=g, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.bfloat16):
        sp = s.float().clone().requires_grad_(True) if dtype != torch.float64 else s.clone().requires_grad_(True)
        xd = x.to(dtype).requires_grad_(True)
        merged = (w + (u * s) @ vt).to(dtype)
        y = DeltaLinear.apply(xd, merged, u.to(dtype), vt.to(dtype), sp)
        results.append([t.double() for t in (y, *torch.autograd.grad(y, (xd, sp), grad_out.to(dtype)))])
    for ref, got in zip(*results):
        assert float((got - ref).norm() / ref.norm()) < 2e-2


def test_svd_delta_trains_after_sampling_in_inference_mode(tiny_qwen3):
    model = fresh_model(tiny_qwen3)
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    randomize(adapter)
    with torch.inference_mode():  # sampling merges W' first
        sampled = model(IDS).logits
    model(IDS, labels=IDS).loss.backward()  # the backward saves that same W'
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.params.values())
    assert torch.equal(sampled, logits(model))
