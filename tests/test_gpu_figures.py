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
    r = load("gpu_step_h100_fast_ckpt18_mb4.json")
    compute = yaml.safe_load((ROOT / "config/presets/fast.yaml").read_text())["compute"]
    assert compute["gradient_checkpointing"] is r["grad_ckpt"] is True
    assert 0 < compute["checkpoint_layers"] == r["ckpt_layers"] < 36      # of Qwen3-4B's 36 layers
    assert compute["micro_batch_size"] == r["sizes"]["micro_batch"]
    assert r["steps_peak_gb"] <= 40


def test_readme_side_by_side_h100_figures_match_the_results():
    fast, trl = (load(f) for f in ("gpu_step_h100_fast_ckpt18_mb4_same_host.json", "trl_step_h100_fast_same_host.json"))
    assert fast["device"] == trl["device"] == "NVIDIA H100 80GB HBM3" and fast["ckpt_layers"] == 18
    assert f"| {fast['step_seconds']:.2f} s | {fast['steps_peak_gb']:.1f} GiB |" in README
    assert f"| {trl['trl_step_s']:.2f} s | {trl['trl_peak_gb']:.1f} GiB |" in README
    assert f"on one host the fast preset's step is {trl['trl_step_s'] / fast['step_seconds']:.1f}× TRL's" in README
    earlier_trl, small = load("trl_step_h100_fast.json"), load("gpu_step_h100_fast_24gb.json")
    flat = README.replace("\n", " ")
    assert f"TRL's earlier run at {earlier_trl['trl_step_s']:.2f} s a step" in flat
    for name in ("gpu_step_h100_fast_ckpt18_mb4.json", "gpu_step_h100_fast_nockpt_mb4.json",
                 "gpu_step_h100_fast_ckpt_mb8.json"):
        r = load(name)
        assert r["device"] == fast["device"]
        assert f"| {r['step_seconds']:.2f} s | {r['steps_peak_gb']:.1f} GiB |" in README
    preset, nockpt = load("gpu_step_h100_fast_ckpt18_mb4.json"), load("gpu_step_h100_fast_nockpt_mb4.json")
    assert (f"{earlier_trl['trl_step_s']:.2f} s: {earlier_trl['trl_step_s'] / preset['step_seconds']:.1f}×, and "
            f"{earlier_trl['trl_step_s'] / nockpt['step_seconds']:.1f}× without checkpointing") in flat
    assert f"| {small['step_seconds']:.2f} s | {small['steps_peak_gb']:.1f} GiB |" in README and small["steps_peak_gb"] <= 24
    assert f"{small['steps_peak_gb']:.1f} GiB on the H100 above" in README
    assert "train_step_error" in load("gpu_step_h100_full_ckpt_mb2_oom.json")


def test_full_preset_is_the_measured_full_step():
    r = load("gpu_step_h100_full_ckpt_mb4.json")
    full = yaml.safe_load((ROOT / "config/presets/full.yaml").read_text())
    assert r["device"] == "NVIDIA H100 80GB HBM3" and r["steps_peak_gb"] <= 80
    assert full["compute"]["micro_batch_size"] == r["sizes"]["micro_batch"]
    assert full["compute"]["gradient_checkpointing"] is r["grad_ckpt"] is True
    assert full["train"]["max_new_tokens"] == r["sizes"]["max_new_tokens"]
    assert full["train"]["group_size"] == r["sizes"]["group_size"]
    last = r["steps"] - 1
    assert (f"{r['step_seconds']:.2f} s a step (generation {r[f'step{last}_gen_seconds']:.2f} s, backward "
            f"{r[f'step{last}_backward_seconds']:.2f} s), peak {r['steps_peak_gb']:.1f} GiB") in README
