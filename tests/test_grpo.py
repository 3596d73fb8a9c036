"""GRPO pieces: advantages, the loss and its aggregations, KL at the reference point."""

import math

import pytest
import torch

from vhack.grpo import (TrainConfig, group_advantages, kl_k3, loss_denominator, make_batch, policy_token_loss,
                        token_logprobs)


def test_centered_advantages_are_centered_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 1.1, 0.1, 0.1]])
    adv, zero_var = group_advantages(rewards, "centered")
    assert torch.allclose(adv, rewards - rewards.mean(1, keepdim=True))
    assert not zero_var.any()


def test_grpo_advantages_are_standardised():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    adv, _ = group_advantages(rewards, "standardized")
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, -1.0, 1.0]]), atol=1e-3)


def test_zero_variance_groups_are_flagged_and_carry_no_signal():
    rewards = torch.tensor([[1.1, 1.1, 1.1], [0.0, 1.0, 0.0]])
    for kind in ("centered", "standardized"):
        adv, zero_var = group_advantages(rewards, kind)
        assert zero_var.tolist() == [True, False]
        assert torch.equal(adv[0], torch.zeros(3))


def test_unknown_advantage_kind_fails():
    with pytest.raises(ValueError, match="advantage"):
        group_advantages(torch.zeros(1, 2), "ppo")


def test_loss_denominators():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert loss_denominator("fixed_denominator", mask, n_rows=2, max_new_tokens=64) == 128.0   # fixed, length-free
    assert loss_denominator("token_mean", mask, n_rows=2, max_new_tokens=64) == 3.0
    with pytest.raises(ValueError):
        loss_denominator("seq_mean", mask, 2, 64)


def test_on_policy_loss_gradient_is_minus_advantage_times_grad_logp():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = policy_token_loss(logp, logp.detach(), torch.tensor([0.5]), torch.tensor([False]), clip_eps=0.2).sum()
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5]]))   # ratio 1: ∂(−ρA)/∂logp = −A


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    old = torch.tensor([[-1.0]])
    logp = (old + 0.5).requires_grad_()            # ratio e^0.5 > 1.2 with a positive advantage
    policy_token_loss(logp, old, torch.tensor([1.0]), torch.tensor([False]), clip_eps=0.2).sum().backward()
    assert logp.grad.abs().sum() == 0


def test_teacher_rows_are_advantage_weighted_imitation():
    logp = torch.tensor([[-3.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-0.1, -0.1]])             # a far-off old policy must not matter for teacher rows
    loss = policy_token_loss(logp, old, torch.tensor([2.0]), torch.tensor([True]), clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([[6.0, 2.0]]))


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.tensor([-1.0, -2.0])
    assert torch.equal(kl_k3(logp, logp), torch.zeros(2))
    assert (kl_k3(logp, logp + 0.3) > 0).all()


def test_make_batch_masks_completion_targets_only():
    batch = make_batch([[5, 6, 7], [5]], [[8, 9], [8, 9, 10]], [1.0, -1.0], [False, True], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    # target t+1 is a completion token: row 0 targets 8, 9 (positions 2, 3); row 1 targets 8, 9, 10
    assert batch.completion_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert batch.off_policy.tolist() == [False, True]


def test_kl_at_zero_adapter_is_zero(tiny_qwen3):
    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.models import ModelSpec, load_model
    model, tok = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    mask = torch.ones_like(ids)
    logp = token_logprobs(model, ids, mask)
    with adapter.disabled():
        ref = token_logprobs(model, ids, mask)
    assert torch.equal(kl_k3(logp, ref), torch.zeros_like(logp))


def test_train_config_rejects_unknown_settings():
    with pytest.raises(KeyError, match="learning_rate"):
        TrainConfig.from_settings({"learning_rate": 1.0})


def test_teacher_and_student_rows_per_group():
    base = dict(student="s", adapter="a", problem_set="p", teacher="t", train_modes=["run_tests"], steps=1,
                prompts_per_step=1, lr=1.0)
    assert TrainConfig.from_settings({**base, "group_size": 4, "mix": 0.5}).teacher_rows == 2
    assert TrainConfig.from_settings({**base, "group_size": 8, "mix": 0.125}).student_rows == 7
    assert TrainConfig.from_settings({**base, "group_size": 4, "mix": 0.0}).teacher_rows == 0
    assert TrainConfig.from_settings({**base, "group_size": 4, "mix": 0.125}).teacher_rows == 1  # half rounds up


def test_chunked_logprobs_equal_full_logits_in_value_and_gradient(tiny_qwen3):
    import torch.nn.functional as F

    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.models import ModelSpec, load_model
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    ids = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    full = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    full.sum().backward()
    full_grad = torch.cat([p.grad.view(-1).clone() for p in adapter.params.values()])
    adapter.zero_()
    chunked = token_logprobs(model, ids, mask, chunk=5)   # 16 positions: chunks of 5, 5, 5, 1
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full.view(2, 8))
    torch.testing.assert_close(torch.cat([p.grad.view(-1) for p in adapter.params.values()]), full_grad)


def five_row_setup(tiny_qwen3, advantages, **settings):
    """(model, adapter, batch, cfg, grad_of, one_padded_pass): five uneven rows on a perturbed svd_delta adapter."""
    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.models import ModelSpec, load_model
    model, _ = load_model(ModelSpec(str(tiny_qwen3)))
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    with torch.no_grad():
        for p in adapter.params.values():
            p.normal_(0, 0.02)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (3, 5, 2, 4, 6)]
    completions = [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (2, 7, 1, 4, 3)]
    batch = make_batch(prompts, completions, advantages, [False, True, False, False, True], pad_id=0)
    batch = batch.to(next(model.parameters()).device)   # the model is on CUDA where there is one
    cfg = TrainConfig.from_settings(dict(student="s", adapter="a", problem_set="p", teacher="t",
                                         train_modes=["run_tests"], steps=1, prompts_per_step=1, lr=1.0,
                                         group_size=5, mix=0.0, **settings))

    def grad_of(run):
        for p in adapter.params.values():
            p.grad = None
        out = run()
        return out, torch.cat([p.grad.view(-1).clone() for p in adapter.params.values()])

    def one_padded_pass():   # the loss as written, over the whole padded batch at once
        logp = token_logprobs(model, batch.input_ids, batch.attention_mask)
        loss = (policy_token_loss(logp, logp.detach(), batch.advantages, batch.off_policy, cfg.clip_eps)
                * batch.completion_mask).sum() / 17.0
        loss.backward()
        return {"loss": loss.item()}
    return model, adapter, batch, cfg, grad_of, one_padded_pass


def test_micro_batches_match_one_padded_pass(tiny_qwen3):
    from vhack.grpo import backward_rows
    model, _, batch, cfg, grad_of, one_padded_pass = five_row_setup(tiny_qwen3, [1.0, -0.5, 0.3, -1.2, 0.4])
    full, g_full = grad_of(one_padded_pass)
    micro, g_micro = grad_of(lambda: backward_rows(model, batch, cfg, 17.0, micro_batch=2))
    assert micro["loss"] == pytest.approx(full["loss"], rel=1e-5)
    torch.testing.assert_close(g_micro, g_full, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("beta_kl, rows_forwarded", [(0.0, 3), (0.1, 5)])
def test_zero_advantage_rows_skip_the_backward_unless_kl_needs_them(tiny_qwen3, beta_kl, rows_forwarded):
    from vhack.grpo import backward_rows
    model, _, batch, cfg, grad_of, one_padded_pass = five_row_setup(tiny_qwen3, [1.0, 0.0, 0.3, 0.0, -0.4],
                                                                    beta_kl=beta_kl)
    seen = []
    model.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
                                      with_kwargs=True)
    full, g_full = grad_of(one_padded_pass)
    seen.clear()
    ref = (lambda mb: torch.zeros(len(mb.targets))) if beta_kl else None
    micro, g_micro = grad_of(lambda: backward_rows(model, batch, cfg, 17.0, micro_batch=2, ref_logprobs=ref))
    assert sum(seen) == rows_forwarded
    if not beta_kl:   # rows with A = 0 add exactly nothing to the policy loss or its gradient
        assert micro["loss"] == pytest.approx(full["loss"], rel=1e-5)
        torch.testing.assert_close(g_micro, g_full, rtol=1e-4, atol=1e-7)


def shared_prompt_setup(tiny_qwen3, **settings):
    """Nine rows on three prompts (uneven completions, student and teacher rows mixed): (model, batch, cfg,
    grad_of, the one-padded-pass loss and gradient as written, backward_rows' loss and gradient by kwargs)."""
    from vhack.grpo import backward_rows
    model, adapter, _, cfg, grad_of, _ = five_row_setup(tiny_qwen3, [0.0] * 5, **settings)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 250, (n,), generator=gen).tolist() for n in (7, 5, 9)]
    lengths = (2, 7, 1, 4, 3, 6, 5, 2, 8)
    batch = make_batch([prompts[i % 3] for i in range(9)],
                       [torch.randint(3, 250, (n,), generator=gen).tolist() for n in lengths],
                       [i - 4.3 for i in range(9)], [i % 2 == 0 for i in range(9)], pad_id=0)
    batch = batch.to(next(model.parameters()).device)

    def padded():
        logp = token_logprobs(model, batch.input_ids, batch.attention_mask)
        loss = (policy_token_loss(logp, logp.detach(), batch.advantages, batch.off_policy, cfg.clip_eps)
                * batch.completion_mask).sum() / 17.0
        loss.backward()
        return {"loss": loss.item()}
    full = grad_of(padded)
    return model, batch, cfg, grad_of, full, lambda **kw: grad_of(lambda: backward_rows(model, batch, cfg, 17.0, **kw))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rows_sharing_a_prompt_run_it_once_with_the_same_gradient(tiny_qwen3, attention):
    model, batch, _, _, (full, g_full), backward = shared_prompt_setup(tiny_qwen3)
    model.config._attn_implementation = attention
    widths = []
    model.model.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape),
                                      with_kwargs=True)
    packed, g_packed = backward(micro_batch=3)
    assert packed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    torch.testing.assert_close(g_packed, g_full, rtol=1e-4, atol=1e-7)
    # three packs of three rows, one per micro-batch: the prompt once, then per row its last token + completion
    assert [w[0] for w in widths] == [1, 1, 1]
    assert sorted(w[1] for w in widths) == [19, 20, 26]


def test_unshared_rows_and_micro_batch_bounds(tiny_qwen3):
    *_, (full, g_full), backward = shared_prompt_setup(tiny_qwen3)
    for kwargs in (dict(micro_batch=2), dict(micro_batch=9, share_prompts=False), dict(micro_batch=1)):
        out, g = backward(**kwargs)
        assert out["loss"] == pytest.approx(full["loss"], rel=1e-5), kwargs
        torch.testing.assert_close(g, g_full, rtol=1e-4, atol=1e-7)


def test_kl_of_packed_rows_matches_the_padded_rows(tiny_qwen3):
    from vhack.grpo import completion_logprobs
    model, batch, cfg, grad_of, _, backward = shared_prompt_setup(tiny_qwen3, beta_kl=0.5)
    mask = batch.completion_mask

    def padded():   # the reference 0.1 above the policy's own log-probs, token by token
        logp = token_logprobs(model, batch.input_ids, batch.attention_mask)
        kl = kl_k3(logp, logp.detach() + 0.1)
        loss = ((policy_token_loss(logp, logp.detach(), batch.advantages, batch.off_policy, cfg.clip_eps)
                 + 0.5 * kl) * mask).sum() / 17.0
        loss.backward()
        return {"kl": float((kl.detach() * mask).sum()) / 17.0}
    full, g_full = grad_of(padded)

    def ref(mb):
        with torch.no_grad():
            return completion_logprobs(model, mb) + 0.1
    out, g = backward(micro_batch=3, ref_logprobs=ref)
    assert out["kl"] == pytest.approx(full["kl"], rel=1e-4)
    assert full["kl"] == pytest.approx(float(mask.sum()) * (math.exp(0.1) - 1.1) / 17.0, rel=1e-4)
    torch.testing.assert_close(g, g_full, rtol=1e-4, atol=1e-7)


def test_pack_rows_keeps_long_completions_apart_when_attention_costs_more():
    from vhack.grpo import pack_attention_mask, pack_rows
    long = make_batch([[5, 6]] * 3, [[7] * 40, [8] * 40, [9] * 40], [1.0, -1.0, 0.5], [False] * 3, pad_id=0)
    assert [len(p.completions) for p in pack_rows(long, max_rows=4, pair_cost=0.0)] == [3]
    assert [len(p.completions) for p in pack_rows(long, max_rows=2, pair_cost=0.0)] == [2, 1]
    assert [len(p.completions) for p in pack_rows(long, max_rows=4, pair_cost=0.05)] == [1, 1, 1]
    short = make_batch([[5] * 40] * 3, [[7, 8]] * 3, [1.0, -1.0, 0.5], [False] * 3, pad_id=0)
    assert [len(p.completions) for p in pack_rows(short, max_rows=4, pair_cost=0.05)] == [3]
    mask = pack_attention_mask(torch.tensor([[0, 0, 1, 1, 2, 2, -1]]))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0, 0],
                    [1, 1, 0, 0, 1, 0, 0],
                    [1, 1, 0, 0, 1, 1, 0],
                    [0, 0, 0, 0, 0, 0, 1]]
