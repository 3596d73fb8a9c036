"""vhack.train_kernels: the Triton training kernels match HF's eager ops (CUDA), and change nothing on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3

from vhack.grpo import token_logprobs
from vhack.train_kernels import rotary_with_fallback, training_kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_qwen3(device: str, dtype: torch.dtype) -> Qwen3ForCausalLM:
    config = Qwen3Config(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=64, intermediate_size=512, vocab_size=320, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    with torch.no_grad():   # non-trivial norm weights, so a kernel that ignores them fails
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def loss_and_grads(model, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logp = token_logprobs(model, ids, torch.ones_like(ids))
    loss = -(logp * torch.linspace(-1, 1, logp.shape[1], device=ids.device)).sum()
    loss.backward()
    return logp.detach(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def test_outside_cuda_it_changes_nothing():
    model = small_qwen3("cpu", torch.float32)
    ids = torch.randint(1, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    logp, grads = loss_and_grads(model, ids)
    with training_kernels(model):
        assert not any("forward" in m.__dict__ for m in model.modules())
        assert modeling_qwen3.apply_rotary_pos_emb.__module__ == modeling_qwen3.__name__
        logp_in, grads_in = loss_and_grads(model, ids)
    assert torch.equal(logp, logp_in)
    assert all(torch.equal(grads[n], grads_in[n]) for n in grads)


def test_rotary_falls_back_for_layouts_the_kernel_does_not_take():
    calls = []
    fused = lambda x, cos, sin: calls.append("fused") or x  # noqa: E731
    original = lambda q, k, cos, sin, unsqueeze_dim=1: calls.append("original") or (q, k)  # noqa: E731
    apply = rotary_with_fallback(fused, original)
    q, k, cos = torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 3, 4)
    apply(q, k, cos, cos)
    assert calls == ["fused", "fused"]
    calls.clear()
    apply(q, k, cos, cos, unsqueeze_dim=2)
    apply(q, k, cos.unsqueeze(0), cos.unsqueeze(0))
    assert calls == ["original", "original"]


@pytest.mark.triton
def test_each_kernel_matches_hf_eager_forward_and_backward(triton_device):
    from vhack import train_kernels_triton as ops
    torch.manual_seed(0)
    dev = triton_device   # bf16 on CUDA; float32 under the CPU interpreter (its bf16 tl.dot is not faithful)
    bf16 = torch.bfloat16 if dev == "cuda" else torch.float32
    norm = modeling_qwen3.Qwen3RMSNorm(128, eps=1e-6).to(dev, bf16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 7, 4, 128, device=dev, dtype=bf16, requires_grad=True)
    gate, up = (torch.randn(5, 300, device=dev, dtype=bf16, requires_grad=True) for _ in range(2))
    q = torch.randn(2, 7, 4, 64, device=dev, dtype=bf16).transpose(1, 2).requires_grad_()  # HF's [B, H, T, D] view
    angles = torch.rand(2, 7, 32, device=dev) * 6
    cos, sin = (torch.cat([f(angles)] * 2, -1).to(bf16) for f in (torch.cos, torch.sin))
    cases = {
        "rms_norm": (lambda: norm(x), lambda: ops.rms_norm(norm, x), [x]),
        "silu_mul": (lambda: torch.nn.functional.silu(gate) * up, lambda: ops.SiLUMulFunction.apply(gate, up),
                     [gate, up]),
        "rotary": (lambda: modeling_qwen3.apply_rotary_pos_emb(q, q, cos, sin)[0],
                   lambda: ops.apply_rotary(q, cos, sin), [q]),
        "rotary, positions shared by the batch": (lambda: modeling_qwen3.apply_rotary_pos_emb(q, q, cos[:1], sin[:1])[0],
                                                  lambda: ops.apply_rotary(q, cos[:1], sin[:1]), [q]),
    }
    for name, (eager, fused, inputs) in cases.items():
        outs, grads = [], []
        for fn in (eager, fused):
            y = fn()
            g = torch.randn(y.shape, generator=torch.Generator(dev).manual_seed(1), device=dev, dtype=y.dtype)
            outs.append(y.detach().float())
            grads.append([d.float() for d in torch.autograd.grad(y, inputs, g)])
        assert outs[1].shape == outs[0].shape, name
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-2, atol=1e-2, msg=name)
        for fused_grad, eager_grad in zip(grads[1], grads[0]):
            torch.testing.assert_close(fused_grad, eager_grad, rtol=2e-2, atol=2e-2, msg=name)


@cuda
def test_a_model_inside_gets_hf_log_probs_and_gradients_with_checkpointing():
    """In fp32 every rounding is the same op in both, so what is left is summation order: 1e-5, not bf16's 1e-2."""
    pytest.importorskip("triton")
    model = small_qwen3("cuda", torch.float32).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(1, 320, (3, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    logp, grads = loss_and_grads(model, ids)
    with training_kernels(model):
        assert sum("forward" in m.__dict__ for m in model.modules()) == 2 * 4 + 1 + 2   # norms, final norm, MLPs
        logp_in, grads_in = loss_and_grads(model, ids)
    assert not any("forward" in m.__dict__ for m in model.modules())
    torch.testing.assert_close(logp_in, logp, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads_in[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)

def test_backward_benchmark_runs_on_cpu_and_its_settings_agree(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(root / "benchmarks/backward_step.py"), "--tiny", "--reps", "1",
                           "--settings", "k:0,ckpt:0,mb:8,share:0 k:1,ckpt:1,mb:2", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "backward_step.json").read_text())
    first, second = results["k:0,ckpt:0,mb:8,share:0"], results["k:1,ckpt:1,mb:2"]
    assert first["grad_rel_diff"] == 0 and first["seconds"] > 0
    assert second["grad_rel_diff"] < 1e-5   # micro-batches, checkpointing and shared prompts only reorder sums


@cuda
def test_rows_sharing_a_prompt_through_the_kernels_match_separate_rows():
    """The packed layout's per-row positions and segment mask, through the Triton rotary and SDPA on CUDA."""
    pytest.importorskip("triton")
    from vhack.grpo import TrainConfig, backward_rows, make_batch
    model = small_qwen3("cuda", torch.float32).train()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 320, (n,), generator=gen).tolist() for n in (30, 17)]
    batch = make_batch([prompts[i % 2] for i in range(6)],
                       [torch.randint(1, 320, (n,), generator=gen).tolist() for n in (9, 20, 5, 14, 11, 3)],
                       [0.5, -1.0, 0.25, 1.0, -0.5, 0.75], [False] * 6, pad_id=0)
    cfg = TrainConfig(student="s", adapter="a", problem_set="p", teacher=None, train_modes=(), steps=1,
                      prompts_per_step=2, group_size=3, mix=0.0, lr=1.0)

    def grads(share: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with training_kernels(model, enabled=share):
            backward_rows(model, batch, cfg, 60.0, micro_batch=6, share_prompts=share)
        return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    separate, packed = grads(False), grads(True)
    for name in separate:
        torch.testing.assert_close(packed[name], separate[name], rtol=1e-4, atol=1e-5, msg=name)
