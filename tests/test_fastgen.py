"""generate_fast against transformers `generate`: greedy token for token, seeded sampling, stop ids."""

import gc
import weakref
from unittest import mock

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from vhack.adapters import AdapterConfig, attach_adapter
from vhack import fastgen
from vhack.fastgen import Sampler, filter_logits, generate_fast, sample_tokens
from vhack.models import ModelSpec, load_model
from vhack.rollout import HFBackend, SamplingConfig

TEXTS = ["def add_k(x):", "class Solution:\n    def twoSum(self, nums, target):", "Write", "assert add_k(1) == 4"]


@pytest.fixture
def sharp_model(tiny_qwen3):
    """The tiny random Qwen3 with matrices scaled ×4: peaked logits, so greedy output varies token to token."""
    model, tok = load_model(ModelSpec(str(tiny_qwen3), dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model, tok


def encode(tok, texts=TEXTS):
    return tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def hf_new_tokens(model, enc, n, stop_ids, pad_id, **opts):
    """model.generate's new tokens, padded to n (generate stops early once every row is done)."""
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, eos_token_id=stop_ids, pad_token_id=pad_id, **opts)
    new = out[:, enc["input_ids"].shape[1]:]
    return torch.nn.functional.pad(new, (0, n - new.shape[1]), value=pad_id)


def fast(model, enc, n, stop_ids, pad_id, temperature=0.0, seed=0, **opts):
    return generate_fast(model, enc["input_ids"], enc["attention_mask"], n, temperature, 1.0, stop_ids, pad_id,
                         seed, **opts)


def test_greedy_matches_generate_with_left_padding(sharp_model):
    model, tok = sharp_model
    enc = encode(tok)
    assert (enc["attention_mask"] == 0).any()  # rows really are left-padded
    ref = hf_new_tokens(model, enc, 24, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    for bucket in (4, 128):  # several KV buckets, and one covering the whole cache
        out = fast(model, enc, 24, [tok.eos_token_id], tok.pad_token_id, kv_bucket=bucket)
        assert out.shape == (len(TEXTS), 24)
        assert torch.equal(out, ref)
    assert len({tuple(r) for r in ref[:, :12].T.tolist()}) > 6  # the comparison sees varied tokens
    assert model.config._attn_implementation != "vhack_fastgen"  # training attention restored


def test_a_prompt_repeated_in_the_batch_is_prefilled_once(sharp_model):
    model, tok = sharp_model
    texts = [TEXTS[i] for i in (0, 1, 0, 2, 1, 0)]   # G rows of one prompt, as a GRPO step samples them
    enc = encode(tok, texts)
    widths = []
    hook = model.model.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    out = fast(model, enc, 16, [tok.eos_token_id], tok.pad_token_id)
    hook.remove()
    assert widths[0][0] == 3 and all(w[0] == len(texts) for w in widths[1:])   # prefill: the distinct prompts
    torch.testing.assert_close(out, hf_new_tokens(model, enc, 16, [tok.eos_token_id], tok.pad_token_id,
                                                  do_sample=False), rtol=0, atol=0)
    sampled = fast(model, enc, 16, [tok.eos_token_id], tok.pad_token_id, temperature=1.0, seed=3)
    assert not torch.equal(sampled[0], sampled[2])   # one prefill, then each row its own sample


def test_shared_prefix_lists_each_prompts_rows_in_lists_of_bounded_length():
    rows = torch.tensor([2, 0, 1, 0, 2, 0, 1])   # each row's distinct prompt
    prefix = fastgen.shared_prefix(rows, 10, per_program=2)
    assert prefix.length == 10
    assert prefix.members.tolist() == [[1, 3], [5, -1], [2, 6], [0, 4]]
    one_list_each = fastgen.shared_prefix(rows, 10, per_program=8).members   # as wide as the largest group
    assert one_list_each.tolist() == [[1, 3, 5], [2, 6, -1], [0, 4, -1]]


@pytest.mark.triton
def test_rows_sharing_a_prompt_read_its_slots_once_and_attend_as_apart(triton_device):
    from vhack import fastgen_triton as kernels
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, dim, prompt_len, cache_len, last = 7, 8, 2, 32, 10, 40, 30
    rows = torch.tensor([2, 0, 1, 0, 2, 0, 1])
    q, k, v = (torch.randn(batch, n, length, dim, generator=g)
               for n, length in ((heads, 1), (kv_heads, cache_len), (kv_heads, cache_len)))
    mask = torch.ones(batch, 1, 1, cache_len, dtype=torch.bool)
    lead = {}
    for b, prompt in enumerate(rows.tolist()):   # one prompt's rows hold its K/V and its left padding
        lead.setdefault(prompt, b)
        k[b, :, :prompt_len], v[b, :, :prompt_len] = k[lead[prompt], :, :prompt_len], v[lead[prompt], :, :prompt_len]
        mask[b, ..., :prompt] = False
    ref = fastgen.grouped_attention(q, k[:, :, :last + 1], v[:, :, :last + 1], mask[..., :last + 1], dim ** -0.5)
    prefix = fastgen.shared_prefix(rows, prompt_len, per_program=2)
    reading = set(prefix.members[:, 0].tolist())
    for b in set(range(batch)) - reading:   # slots a shared read never touches
        k[b, :, :prompt_len], v[b, :, :prompt_len] = float("nan"), float("nan")
    dev = lambda *ts: [t.to(triton_device) for t in ts]  # noqa: E731
    q, k, v, mask = dev(q, k, v, mask)
    last_slot = torch.tensor([last], device=triton_device)
    shared = kernels.triton_grouped_attention(q, k, v, mask, dim ** -0.5, last_slot,
                                              fastgen.SharedPrefix(prefix.members.to(triton_device), prompt_len))
    torch.testing.assert_close(shared.cpu(), ref, rtol=1e-5, atol=1e-5)
    apart = kernels.triton_grouped_attention(q, k, v, mask, dim ** -0.5, last_slot)
    assert apart.isnan().any()   # without the prefix every row reads its own (here poisoned) prompt slots


@pytest.mark.triton
def test_fused_generation_attends_to_each_prompt_once_per_group_and_matches_unfused(sharp_model, triton_device):
    from vhack import fastgen_triton as kernels
    model, tok = sharp_model
    model.to(triton_device)
    enc = encode(tok, [TEXTS[i] for i in (0, 1, 0, 2, 1, 0)]).to(triton_device)
    ref = fast(model, enc, 12, [tok.eos_token_id], tok.pad_token_id, fused=False)
    seen = []
    attention = kernels.triton_grouped_attention
    with mock.patch.object(kernels, "triton_grouped_attention",
                           side_effect=lambda *a: seen.append(a[-1]) or attention(*a)):
        out = fast(model, enc, 12, [tok.eos_token_id], tok.pad_token_id, fused=True)
    assert torch.equal(out, ref)
    assert {frozenset(m) - {-1} for m in seen[0].members.tolist()} == {frozenset({0, 2, 5}), frozenset({1, 4}),
                                                                         frozenset({3})}
    assert all(p.length == enc["input_ids"].shape[1] for p in seen)


@pytest.mark.parametrize("kind", ["svd_delta", "lora"])
def test_greedy_matches_generate_through_an_adapter(sharp_model, kind):
    model, tok = sharp_model
    adapter = attach_adapter(model, AdapterConfig(kind=kind))
    g = torch.Generator().manual_seed(0)
    for flat in adapter.flat_params().values():  # in place: the adapter's zero check sees the write
        flat.copy_(torch.randn(flat.shape, generator=g) * (1.0 if kind == "svd_delta" else 0.3))
    enc = encode(tok)
    ref = hf_new_tokens(model, enc, 16, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    with adapter.disabled():
        base = hf_new_tokens(model, enc, 16, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    assert not torch.equal(ref, base)  # the delta changes the output
    # through the adapter's own modules (left unpacked), and on its merged weights (packed, modules bypassed)
    assert torch.equal(fast(model, enc, 16, [tok.eos_token_id], tok.pad_token_id, kv_bucket=4), ref)
    merged = adapter.merged_weights()
    assert torch.equal(fast(model, enc, 16, [tok.eos_token_id], tok.pad_token_id, kv_bucket=4, weights=merged), ref)


def test_projections_are_packed_while_sampling_and_restored_after(sharp_model):
    model, tok = sharp_model
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    modules = [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj]
    calls = []
    original = fastgen.PackedLinear.slice

    def counted(self, x, index):
        calls.append((id(self), index))
        return original(self, x, index)
    with mock.patch.object(fastgen.PackedLinear, "slice", counted):
        fast(model, encode(tok), 3, [tok.eos_token_id], tok.pad_token_id)
    packs = {pack for pack, _ in calls}
    assert len(packs) == 2 * len(model.model.layers)  # q/k/v and gate/up of every layer
    assert sorted(i for pack, i in calls if pack == calls[0][0]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # prefill + 2 steps
    assert [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj,
            mlp.up_proj] == modules


def test_the_kv_cache_is_freed_on_return_without_the_garbage_collector(sharp_model):
    """A layer hook referring back to its layer kept each call's cache alive until gc ran: 8 rollout
    batches of the full regime held 8 caches at once."""
    model, tok = sharp_model
    caches = []
    original = fastgen.StaticCache

    def tracked(*args, **kwargs):
        cache = original(*args, **kwargs)
        caches.append(weakref.ref(cache.layers[0]))
        return cache
    gc.disable()
    try:
        with mock.patch.object(fastgen, "StaticCache", tracked):
            for seed in range(3):
                fast(model, encode(tok), 4, [tok.eos_token_id], tok.pad_token_id, temperature=1.0, seed=seed)
        assert len(caches) == 3 and all(ref() is None for ref in caches)
    finally:
        gc.enable()


def test_stop_id_ends_a_row_and_pads_after(sharp_model):
    model, tok = sharp_model
    enc = encode(tok)
    free = fast(model, enc, 24, [tok.eos_token_id], tok.pad_token_id)
    stop = int(free[0, 5])  # a token row 0 emits mid-way
    out = fast(model, enc, 24, [tok.eos_token_id, stop], tok.pad_token_id)
    ref = hf_new_tokens(model, enc, 24, [tok.eos_token_id, stop], tok.pad_token_id, do_sample=False)
    assert torch.equal(out, ref)
    first = free[0].tolist().index(stop)
    assert out[0, first] == stop and (out[0, first + 1:] == tok.pad_token_id).all()


def test_every_row_finished_leaves_pads(sharp_model):
    model, tok = sharp_model
    enc = encode(tok)
    every_token = list(range(model.config.vocab_size))
    out = fast(model, enc, 40, every_token, tok.pad_token_id, temperature=1.0, check_every=4)
    assert (out[:, 0] != tok.pad_token_id).all() and (out[:, 1:] == tok.pad_token_id).all()


def test_sampling_is_seeded_and_stops_at_stop_ids(sharp_model):
    model, tok = sharp_model
    enc = encode(tok)
    stops = list(range(0, model.config.vocab_size, 9))  # ~11% of tokens: rows end within a few steps
    a = fast(model, enc, 32, stops, tok.pad_token_id, temperature=1.0, seed=3)
    b = fast(model, enc, 32, stops, tok.pad_token_id, temperature=1.0, seed=3)
    c = fast(model, enc, 32, stops, tok.pad_token_id, temperature=1.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a.tolist():
        ends = [i for i, t in enumerate(row) if t in stops]
        assert ends, "a row ran 32 tokens without one of 28 stop ids"
        assert all(t == tok.pad_token_id for t in row[ends[0] + 1:])
        assert all(t not in stops for t in row[:ends[0]])


def test_gumbel_max_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    rows = 200_000
    noise = torch.rand(rows, 5, generator=torch.Generator().manual_seed(0))
    tokens = sample_tokens(logits.expand(rows, 5), noise, Sampler(temperature=0.7))
    freq = torch.bincount(tokens, minlength=5).float() / rows
    assert torch.allclose(freq, torch.softmax(logits / 0.7, -1), atol=4e-3)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (3, 1.0), (5, 0.5), (0, 0.01)])
def test_filters_match_transformers_warpers(top_k, top_p):
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(top_k))
    expected = logits / 0.8
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    assert torch.equal(filter_logits(logits, Sampler(0.8, top_p, top_k)), expected)


def test_hf_backend_fast_option_matches_generate(sharp_model):
    model, tok = sharp_model
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    prompts = TEXTS[:3]
    plain = HFBackend(model, tok).generate(prompts, 2, sampling, seed=0)
    quick = HFBackend(model, tok, fast=True).generate(prompts, 2, sampling, seed=0)
    assert [c.token_ids for c in quick] == [c.token_ids for c in plain]
    assert [c.finished for c in quick] == [c.finished for c in plain]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12)
    first = HFBackend(model, tok, fast=True).generate(prompts, 2, sampling, seed=5)
    again = HFBackend(model, tok, fast=True).generate(prompts, 2, sampling, seed=5)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert len({tuple(c.token_ids) for c in first[:2]}) == 2  # two samples of one prompt differ


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_graphs_and_fused_kernels_match_generate(sharp_model):
    model, tok = sharp_model
    model.cuda()  # float32: greedy choices compare exactly
    enc = encode(tok).to("cuda")
    stop_ids = [tok.eos_token_id]
    ref = hf_new_tokens(model, enc, 40, stop_ids, tok.pad_token_id, do_sample=False)
    for fused in (False, True):
        for graphs in (False, True):
            out = fast(model, enc, 40, stop_ids, tok.pad_token_id, kv_bucket=8, use_graphs=graphs, fused=fused)
            assert torch.equal(out, ref), (fused, graphs)
        sampled = [fast(model, enc, 40, stop_ids, tok.pad_token_id, 1.0, kv_bucket=8, use_graphs=graphs,
                        fused=fused) for graphs in (False, True)]
        assert torch.equal(*sampled)  # a replayed graph draws what the eager step draws


@pytest.mark.gpu
@cuda
@pytest.mark.skipif(not fastgen.HAS_TRITON, reason="needs Triton")
def test_triton_kernels_match_torch_in_bf16():
    from transformers.models.qwen3 import modeling_qwen3 as qwen3

    from vhack import fastgen_triton as kernels

    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device="cuda").to(torch.bfloat16)

    batch, heads, kv_heads, dim, cache_len, kv_len = 16, 32, 8, 128, 700, 555
    q = randn(batch, 1, heads, dim).transpose(1, 2)  # HF's layout: a transposed view
    k, v = randn(batch, kv_heads, cache_len, dim), randn(batch, kv_heads, cache_len, dim)
    mask = torch.rand(batch, 1, 1, kv_len, generator=g, device="cuda") < 0.8
    mask[..., -1] = True
    ref = fastgen.grouped_attention(q.float(), k[:, :, :kv_len].float(), v[:, :, :kv_len].float(), mask, 0.088)
    out = kernels.triton_grouped_attention(q, k, v, mask, 0.088)
    assert ((out.float() - ref).norm() / ref.norm()) < 1e-2
    longer = torch.cat([mask, torch.ones(batch, 1, 1, cache_len - kv_len, dtype=torch.bool, device="cuda")], -1)
    last_slot = torch.tensor([kv_len - 1], device="cuda")  # read from the device: slots past it are ignored
    assert torch.equal(kernels.triton_grouped_attention(q, k, v, longer, 0.088, last_slot), out)
    rows = torch.arange(batch, device="cuda") // 4   # G = 4 rows per prompt, its 300 slots read once per group
    k[:, :, :300], v[:, :, :300], mask[..., :300] = k[rows * 4, :, :300], v[rows * 4, :, :300], mask[rows * 4, ..., :300]
    ref = fastgen.grouped_attention(q.float(), k[:, :, :kv_len].float(), v[:, :, :kv_len].float(), mask, 0.088)
    prefix = fastgen.shared_prefix(rows, 300, kernels.members_per_program(qwen3.Qwen3Config(
        num_attention_heads=heads, num_key_value_heads=kv_heads)))
    assert prefix.members.shape == (4, 4)   # 4 query heads per KV head x 4 rows: one 16-row tl.dot
    shared = kernels.triton_grouped_attention(q, k, v, longer, 0.088, last_slot, prefix)
    assert ((shared.float() - ref).norm() / ref.norm()) < 1e-2

    logits, noise = randn(batch, 151936), torch.rand(batch, 151936, generator=g, device="cuda")
    want = fastgen.sample_tokens(logits.float(), noise, fastgen.Sampler(0.7))
    assert torch.equal(kernels.triton_gumbel_argmax(logits, noise, 0.7), want)

    norm = qwen3.Qwen3RMSNorm(2560).cuda().to(torch.bfloat16)
    norm.weight.data = randn(2560)
    x = randn(batch, 1, 2560)
    assert torch.allclose(kernels.triton_rms_norm(norm, x).float(), norm(x).float(), rtol=1e-2, atol=1e-2)
    head_norm = qwen3.Qwen3RMSNorm(dim).cuda().to(torch.bfloat16)
    head_norm.weight.data = randn(dim)
    packed = randn(batch, 3, (heads + 2 * kv_heads) * dim)  # q of packed q/k/v: a strided per-head view
    q_rows = packed[..., :heads * dim].view(batch, 3, heads, dim)
    assert torch.allclose(kernels.triton_rms_norm(head_norm, q_rows).float(), head_norm(q_rows).float(),
                          rtol=1e-2, atol=1e-2)

    gate_up = randn(batch, 3, 2 * 9728)
    gate, up = gate_up.chunk(2, -1)
    torch.testing.assert_close(kernels.triton_silu_mul(gate_up), torch.nn.functional.silu(gate) * up,
                               rtol=1.6e-2, atol=1e-2)

    config = qwen3.Qwen3Config(head_dim=dim, num_attention_heads=heads, hidden_size=2560)
    cos, sin = qwen3.Qwen3RotaryEmbedding(config).cuda()(q, torch.randint(0, 4000, (batch, 1), device="cuda"))
    kk = randn(batch, 1, kv_heads, dim).transpose(1, 2)
    expected = qwen3.apply_rotary_pos_emb(q, kk, cos, sin)
    got = kernels.fused_rotary(qwen3.apply_rotary_pos_emb)(q, kk, cos, sin)
    for a, b in zip(got, expected):  # bf16 may differ by an ulp (float32 generate matches token for token)
        torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1e-2)
