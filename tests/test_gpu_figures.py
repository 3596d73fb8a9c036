"""README's GPU figures and the fast preset's memory setting are those of the committed benchmark outputs."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text()


def load(name):
    return json.loads((RESULTS / name).read_text())


@pytest.mark.parametrize("name,label", [
    ("gpu_step_h200_fast_mb4.json", "micro-batch 4, no checkpointing"),
    ("gpu_step_h200_fast_ckpt_mb8.json", "micro-batch 8, gradient checkpointing (every layer)"),
])
def test_readme_step_rows_match_the_results(name, label):
    r = load(name)
    last = r["steps"] - 1
    assert r["device"] == "NVIDIA H200" and "**NVIDIA H200**" in README
    row = (f"| {label} | {r['step_seconds']:.2f} s | {r[f'step{last}_gen_seconds']:.2f} s | "
           f"{r[f'step{last}_backward_seconds']:.2f} s | {r['steps_peak_gb']:.1f} GiB |")
    assert row in README


def test_readme_generation_figures_match_the_results():
    r = load("gpu_step_h200_fast_mb4.json")
    assert f"plain `generate` {r['gen_plain_tokens_per_s']:,.0f} tokens/s" in README
    assert f"`generate_fast` {r['gen_fast_tokens_per_s']:,.0f} tokens/s" in README
    assert f"`fast_over_plain={r['fast_over_plain']:.2f}`" in README
    assert f"bound {r['gen_bound_tokens_per_s']:,.0f}" in README


def test_fast_preset_uses_the_measured_memory_setting():
    r = load("gpu_step_h100_fast_shared_same_host.json")
    compute = yaml.safe_load((ROOT / "config/presets/fast.yaml").read_text())["compute"]
    assert compute["gradient_checkpointing"] is r["grad_ckpt"] is True
    assert compute["fused_kernels"] is r["fused_kernels"] is True
    assert 0 < compute["checkpoint_layers"] == r["ckpt_layers"] < 36      # of Qwen3-4B's 36 layers
    assert compute["micro_batch_size"] == r["sizes"]["micro_batch"]
    assert compute.get("share_prompts", True) is True   # the default, as in every *_shared_* run
    assert r["steps_peak_gb"] * 2**30 / 1e9 <= 40
    assert f"the step under 40 GB ({r['steps_peak_gb'] * 2**30 / 1e9:.1f} GB)" in README.replace("\n", " ")


def row(r):
    return f"| {r['step_seconds']:.2f} s | {r['steps_peak_gb']:.1f} GiB |"


def test_readme_side_by_side_h100_figures_match_the_results():
    fast, trl = load("gpu_step_h100_fast_shared_same_host.json"), load("trl_step_h100_fast_shared_same_host.json")
    fast18 = load("gpu_step_h100_fast_shared_ckpt18.json")
    kernels, trl_kernels = load("gpu_step_h100_fast_kernels_same_host.json"), load("trl_step_h100_fast_kernels_same_host.json")
    before, trl_before = (load(f) for f in ("gpu_step_h100_fast_ckpt18_mb4_same_host.json",
                                           "trl_step_h100_fast_same_host.json"))
    other, earlier_trl = load("gpu_step_h100_fast_kernels_ckpt18_mb4.json"), load("trl_step_h100_fast.json")
    assert fast["ckpt_layers"] == 12 and all(r["ckpt_layers"] == 18 for r in (fast18, kernels, before, other))
    for r in (fast, fast18, kernels, before, other):
        assert r["device"] == trl["device"] == "NVIDIA H100 80GB HBM3"
        assert row(r) in README
    assert all(r["fused_kernels"] for r in (fast, fast18, kernels, other)) and "fused_kernels" not in before
    for t in (trl, trl_kernels, trl_before):
        assert f"| {t['trl_step_s']:.2f} s | {t['trl_peak_gb']:.1f} GiB |" in README
    flat = README.replace("\n", " ")
    assert f"on one host the fast preset's step is {trl['trl_step_s'] / fast['step_seconds']:.1f}× TRL's" in flat
    assert f"({trl_kernels['trl_step_s'] / kernels['step_seconds']:.1f}× on the second host" in flat
    assert (f"({trl_before['trl_step_s']:.2f} to {trl_kernels['trl_step_s']:.2f} s against {fast['step_seconds']:.2f} to "
            f"{load('gpu_step_h100_fast_ckpt18_mb4.json')['step_seconds']:.2f} s)") in flat
    assert f"the ratio was {trl_before['trl_step_s'] / before['step_seconds']:.1f}× before the training kernels" in flat
    assert f"TRL's earliest run at {earlier_trl['trl_step_s']:.2f} s a step" in flat
    last = fast["steps"] - 1
    assert (f"Of the fast preset's {fast['step_seconds']:.2f} s, generation is {fast[f'step{last}_gen_seconds']:.2f} s "
            f"and the backward {fast[f'step{last}_backward_seconds']:.2f} s") in flat
    for name in ("gpu_step_h100_fast_ckpt18_mb4.json", "gpu_step_h100_fast_nockpt_mb4.json",
                 "gpu_step_h100_fast_ckpt_mb8.json"):
        r = load(name)
        assert r["device"] == fast["device"] and row(r) in README
    small = load("gpu_step_h100_fast_24gb.json")
    assert row(small) in README and small["steps_peak_gb"] <= 24
    assert f"{small['steps_peak_gb']:.1f} GiB on the H100 above" in README
    assert "train_step_error" in load("gpu_step_h100_full_ckpt_mb2_oom.json")


def test_readme_backward_table_matches_the_results():
    r = load("backward_step_h100.json")
    assert r["device"] == "NVIDIA H100 80GB HBM3" and r["rows"] == 64 and r["tokens_per_row"] == 1024
    labels = {"k:0,ckpt:18,mb:4,share:0": "HF's eager ops, micro-batch 4, 18 layers checkpointed, rows apart",
              "k:1,ckpt:18,mb:4,share:0": "training kernels, same",
              "k:1,ckpt:18,mb:4": "training kernels, shared prompts, 18 layers checkpointed",
              "k:1,ckpt:12,mb:4": "training kernels, shared prompts, 12 layers checkpointed (the fast preset)",
              "k:1,ckpt:9,mb:4": "training kernels, shared prompts, 9 layers checkpointed",
              "k:1,ckpt:0,mb:4": "training kernels, shared prompts, no checkpointing",
              "k:1,ckpt:36,mb:8": "training kernels, shared prompts, micro-batch 8, every layer checkpointed"}
    for setting, label in labels.items():
        assert f"| {label} | {r[setting]['seconds']:.2f} s | {r[setting]['peak_gb']:.1f} GiB |" in README
    assert all(r[setting]["grad_rel_diff"] < 0.1 for setting in labels)   # bf16 noise of ±A rows (fp32 below)
    exact = load("backward_step_h100_fp32_reference.json")
    flat = README.replace("\n", " ")
    assert (f"relative difference {exact['k:1,ckpt:18,mb:4']['fp32_rel_diff']:.2%} against "
            f"{exact['k:0,ckpt:18,mb:4']['fp32_rel_diff']:.2%}") in flat


def test_full_preset_is_the_measured_full_step():
    r = load("gpu_step_h100_full_kernels_shared_mb4.json")
    full = yaml.safe_load((ROOT / "config/presets/full.yaml").read_text())
    assert r["device"] == "NVIDIA H100 80GB HBM3" and r["steps_peak_gb"] <= 80 and r["fused_kernels"]
    assert full["compute"]["micro_batch_size"] == r["sizes"]["micro_batch"]
    assert full["compute"]["gradient_checkpointing"] is r["grad_ckpt"] is True
    assert full["compute"].get("checkpoint_layers") is r["ckpt_layers"] is None
    assert full["train"]["max_new_tokens"] == r["sizes"]["max_new_tokens"]
    assert full["train"]["group_size"] == r["sizes"]["group_size"]
    assert full["cost"]["train_step_s"] == round(r["step_seconds"])
    flat = README.replace("\n", " ")
    last = r["steps"] - 1
    assert (f"{r['step_seconds']:.2f} s a step (generation {r[f'step{last}_gen_seconds']:.2f} s, backward "
            f"{r[f'step{last}_backward_seconds']:.2f} s), peak {r['steps_peak_gb']:.1f} GiB") in flat
    earlier = load("gpu_step_h100_full_ckpt_mb4.json")
    assert f"took {earlier['step_seconds']:.2f} s at {earlier['steps_peak_gb']:.1f} GiB" in flat
