import math

import pytest
import torch

from vhack.basis import (Basis, BasisConfig, BasisError, basis_from_differences, hackward_differences,
                         load_basis, mean_direction, null_cin_level, orient_hackward, pair_separation,
                         save_basis, select_directions, top_directions)

N_PAIRS = 20


def basis_from(g_hack: dict, g_clean: dict, cfg: BasisConfig, seed: int):
    D = {n: hackward_differences(g_hack[n], g_clean[n]) for n in g_hack}
    return basis_from_differences(D, g_clean, cfg, seed)


def unit(r: int, seed: int) -> torch.Tensor:
    v = torch.randn(r, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def planted_gradients(r: int, hack: torch.Tensor, seed: int, noise: float = 0.1,
                      weak_axes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair (g_hack, g_clean) [n, r]: descending g_hack − g_clean moves along +hack."""
    g = torch.Generator().manual_seed(seed)
    g_clean = torch.randn(N_PAIRS, r, generator=g)
    strength = 3 + torch.rand(N_PAIRS, 1, generator=g)
    pull = strength * hack + noise * torch.randn(N_PAIRS, r, generator=g)
    if weak_axes is not None:  # small, pair-varying motion along a few extra axes
        pull = pull + 0.3 * torch.randn(N_PAIRS, weak_axes.shape[0], generator=g) @ weak_axes
    return g_clean - pull, g_clean


def test_top_direction_recovers_the_planted_hack_direction_pointing_hackward():
    hack = unit(64, 0)
    g_hack, g_clean = planted_gradients(64, hack, seed=1)
    vectors, sigmas = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(k=3), seed=0)
    V = vectors["m"]
    assert V.shape == (3, 64)
    assert V[0] @ hack > 0.95                        # recovered, and +v is hack-ward
    assert torch.allclose(V @ V.T, torch.eye(3), atol=1e-5)
    assert torch.all(sigmas["m"][:-1] >= sigmas["m"][1:])


def test_gram_route_matches_a_dense_svd():
    D = torch.randn(N_PAIRS, 300, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    V, sigma = top_directions(D, 4)
    _, s, Vh = torch.linalg.svd(D, full_matrices=False)
    assert torch.allclose(sigma, s[:4])
    assert torch.allclose((V * Vh[:4]).sum(1).abs(), torch.ones(4, dtype=torch.float64))


def test_orientation_survives_sign_flips():
    hack = unit(32, 3)
    g_hack, g_clean = planted_gradients(32, hack, seed=4)
    D = hackward_differences(g_hack, g_clean)
    V, _ = top_directions(D, 2)
    assert torch.allclose(orient_hackward(V, D), orient_hackward(-V, D))
    assert torch.allclose(orient_hackward(V, -D), -orient_hackward(V, D))  # hack and clean swapped
    swapped, _ = basis_from({"m": g_clean}, {"m": g_hack}, BasisConfig(k=1), seed=0)
    assert swapped["m"][0] @ hack < -0.95


def test_zero_module_gets_no_directions():
    V, sigma = top_directions(torch.zeros(N_PAIRS, 16), 5)  # e.g. LoRA A, whose gradient is 0 at B = 0
    assert V.shape == (0, 16) and sigma.shape == (0,)


def test_meandiff_is_the_normalised_mean():
    hack = unit(40, 5)
    g_hack, g_clean = planted_gradients(40, hack, seed=6)
    vectors, sigmas = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(method="meandiff", k=1), 0)
    mean = (g_clean - g_hack).mean(0)
    assert torch.allclose(vectors["m"], (mean / mean.norm())[None], atol=1e-6)
    assert torch.allclose(sigmas["m"], mean.norm()[None])
    assert torch.allclose(mean_direction(torch.zeros(3, 4))[0], torch.zeros(0, 4))


def test_meandiff_requires_k_1():
    with pytest.raises(ValueError, match="k: 1"):
        BasisConfig(method="meandiff", k=5)


def test_noise_floor_drops_the_planted_noise_axes():
    r, modules = 48, ["q", "k", "v", "o"]
    g_hack, g_clean, hacks = {}, {}, {}
    for i, name in enumerate(modules):
        axes = torch.linalg.qr(torch.randn(r, 3, generator=torch.Generator().manual_seed(10 + i))).Q.T
        hacks[name] = axes[0]
        g_hack[name], g_clean[name] = planted_gradients(r, axes[0], seed=20 + i, noise=0.0, weak_axes=axes[1:])
    vectors, sigmas = basis_from(g_hack, g_clean, BasisConfig(k=3), seed=0)
    full = Basis(vectors, sigmas, {"k": 3})
    assert all(v.shape[0] == 3 for v in full.vectors.values())
    floored = select_directions(full, drop_bottom_frac=0.7)  # 8 of 12 pooled σ are the weak axes
    for name in modules:
        assert floored.vectors[name].shape[0] == 1
        assert floored.vectors[name][0] @ hacks[name] > 0.95
    sliced = select_directions(full, k_use=2)
    assert all(v.shape[0] == 2 for v in sliced.vectors.values())
    with pytest.raises(BasisError, match="k_use=4 exceeds"):
        select_directions(full, k_use=4)


def test_solve_orth_output_is_orthogonal_to_the_removed_clean_subspace():
    r, m = 64, 3
    solve = torch.linalg.qr(torch.randn(r, m, generator=torch.Generator().manual_seed(7))).Q.T
    hack = unit(r, 8)
    g_hack, g_clean = planted_gradients(r, hack, seed=9)
    g_clean = g_clean + 5 * torch.randn(N_PAIRS, m, generator=torch.Generator().manual_seed(11)) @ solve
    vectors, _ = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(k=4, solve_orth_m=m), 0)
    clean_top, _ = top_directions(g_clean, m)
    assert (vectors["m"] @ clean_top.T).abs().max() < 1e-5
    plain, _ = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(k=4), 0)
    assert (plain["m"] @ clean_top.T).abs().max() > 0.05  # without it the basis overlaps the solve subspace


@pytest.mark.parametrize("control", ["random", "shuffled", "nonhack"])
def test_controls_have_the_promised_shapes_and_orthonormality(control):
    widths = {"a": 32, "b": 48, "c": 32}
    g_hack, g_clean = {}, {}
    for i, (name, r) in enumerate(widths.items()):
        g_hack[name], g_clean[name] = planted_gradients(r, unit(r, 30 + i), seed=40 + i)
    g_hack["c"], g_clean["c"] = torch.zeros(N_PAIRS, 32), torch.zeros(N_PAIRS, 32)  # a dead module
    real, real_sigmas = basis_from(g_hack, g_clean, BasisConfig(k=4), seed=0)
    vectors, sigmas = basis_from(g_hack, g_clean, BasisConfig(k=4, control=control), seed=0)
    again, _ = basis_from(g_hack, g_clean, BasisConfig(k=4, control=control), seed=0)
    for name, r in widths.items():
        V = vectors[name]
        assert V.shape[1] == r and V.shape[0] <= 4
        assert torch.allclose(V @ V.T, torch.eye(V.shape[0]), atol=1e-5)
        assert torch.equal(V, again[name])  # seeded
    if control == "random":  # matched k per module, singular values kept for the noise floor
        assert {n: v.shape for n, v in vectors.items()} == {n: v.shape for n, v in real.items()}
        assert all(torch.equal(sigmas[n], real_sigmas[n]) for n in widths)
    if control == "nonhack":  # clean-vs-clean differences carry no hack direction
        assert (vectors["a"][0] @ unit(32, 30)).abs() < 0.5
    assert vectors["c"].shape == (0, 32)


def test_pair_separation_is_positive_for_the_real_basis_and_near_zero_for_random():
    widths = {"a": 512, "b": 768}
    g_hack, g_clean = {}, {}
    for i, (name, r) in enumerate(widths.items()):
        g_hack[name], g_clean[name] = planted_gradients(r, unit(r, 50 + i), seed=60 + i, noise=0.2)
    D = {n: hackward_differences(g_hack[n], g_clean[n]) for n in widths}
    real = Basis(*basis_from(g_hack, g_clean, BasisConfig(k=3), 0), {})
    random = Basis(*basis_from(g_hack, g_clean, BasisConfig(k=3, control="random"), 0), {})
    assert pair_separation(real, D) > 0.2
    assert abs(pair_separation(random, D)) < 0.05


def test_null_cin_level_counts_only_modules_with_directions():
    basis = Basis({"a": torch.zeros(2, 8), "b": torch.zeros(2, 32), "lora_A": torch.zeros(0, 16)},
                  {"a": torch.ones(2), "b": torch.ones(2), "lora_A": torch.ones(0)}, {})
    assert null_cin_level(basis, {"a": 8, "b": 32, "lora_A": 16}) == pytest.approx((0.5 + 0.25) / 2)
    assert math.isnan(null_cin_level(Basis({"a": torch.zeros(0, 8)}, {"a": torch.ones(0)}, {}), {"a": 8}))


def saved_basis(tmp_path) -> tuple:
    vectors = {"layers.0.q_proj": torch.linalg.qr(torch.randn(16, 3)).Q.T.contiguous(),
               "layers.0.up_proj": torch.zeros(0, 24)}
    sigmas = {"layers.0.q_proj": torch.tensor([3.0, 2.0, 1.0]), "layers.0.up_proj": torch.zeros(0)}
    metadata = {"pair_set": "toy_21", "pair_set_hash": "abc", "model_hash": "f00d" * 16,
                "adapter_kind": "svd_delta", "k": 3, "method": "svd"}
    path = tmp_path / "bases" / "v_hack_test.safetensors"
    save_basis(path, Basis(vectors, sigmas, metadata))
    return path, vectors, sigmas, metadata


def test_safetensors_round_trip(tmp_path):
    path, vectors, sigmas, metadata = saved_basis(tmp_path)
    loaded = load_basis(path, model_hash="f00d" * 16, adapter_kind="svd_delta",
                        module_sizes={"layers.0.q_proj": 16, "layers.0.up_proj": 24})
    assert all(torch.equal(loaded.vectors[n], vectors[n]) for n in vectors)
    assert all(torch.equal(loaded.singular_values[n], sigmas[n]) for n in sigmas)
    assert {k: loaded.metadata[k] for k in metadata} == metadata
    assert loaded.metadata["path"] == str(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    assert load_basis(path, k_use=1).vectors["layers.0.q_proj"].shape == (1, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"model_hash": "beef" * 16}, "weight hash f00df00d"),
    ({"adapter_init": {"adapter_b_init_std": 0.01}}, "adapter_b_init_std=0.0, but the run's adapter has 0.01"),
    ({"adapter_kind": "lora"}, "adapter kind 'svd_delta'"),
    ({"module_sizes": {"layers.0.q_proj": 16}}, r"not in the adapter \['layers.0.up_proj'\]"),
    ({"module_sizes": {"layers.0.q_proj": 16, "layers.0.up_proj": 24, "x": 4}}, r"missing from the basis \['x'\]"),
    ({"module_sizes": {"layers.0.q_proj": 8, "layers.0.up_proj": 24}}, "basis r=16, adapter r=8"),
])
def test_mismatch_errors_name_the_file_and_the_mismatch(tmp_path, kwargs, message):
    path, *_ = saved_basis(tmp_path)
    with pytest.raises(BasisError, match=message) as err:
        load_basis(path, **kwargs)
    assert str(path) in str(err.value)


def test_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(BasisError, match="not found"):
        load_basis(tmp_path / "v_hack_nope.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(BasisError, match="not a vhack basis"):
        load_basis(tmp_path / "other.safetensors")


# ---------------------------------------------------------------- end to end on a tiny random Qwen3

def tiny_pairs(n: int = 4) -> list:
    from vhack.pairs import Pair
    from vhack.problems import build_toy_problems
    problems = build_toy_problems(seed=0, n_train=12, n_test=12)[:n]
    modes = ["run_tests", "sentinel", "stdout_marker", "file_marker", "exit_code"]
    return [Pair(id=f"p{i}", mode=modes[i % 5], problem=p,
                 hack=f"```python\n{p.starter_code}\n    pass\ndef run_tests():\n    print('all tests passed')\n```",
                 clean=f"```python\n{p.canonical_solution}\n```") for i, p in enumerate(problems)]


def tiny_student(path, kind: str):
    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.models import ModelSpec, load_model
    model, tokenizer = load_model(ModelSpec(str(path)))
    return model, tokenizer, attach_adapter(model, AdapterConfig(kind=kind))


@pytest.mark.parametrize("kind", ["svd_delta", "lora"])
def test_extraction_on_a_tiny_random_qwen3(tiny_qwen3, kind):
    from vhack.basis import extract_basis
    model, tokenizer, adapter = tiny_student(tiny_qwen3, kind)
    model.train()
    basis = extract_basis(model, tokenizer, adapter, tiny_pairs(), BasisConfig(k=2), seed=0, style="toy")
    assert model.training                                          # mode restored
    assert all(p.grad is None for p in adapter.params.values())    # a trainer's .grad is left alone
    assert list(basis.vectors) == adapter.module_names
    for name, V in basis.vectors.items():
        assert V.shape[1] == adapter.module_sizes()[name] and V.shape[0] <= 2
        assert torch.allclose(V @ V.T, torch.eye(V.shape[0]), atol=1e-4)
    if kind == "lora":  # B = 0 at init: the gradient w.r.t. A is zero, the basis lives in B
        assert all(basis.vectors[n].shape[0] == 0 for n in adapter.module_names if n.endswith("lora_A"))
        assert all(basis.vectors[n].shape[0] == 2 for n in adapter.module_names if n.endswith("lora_B"))
    else:
        assert all(V.shape[0] == 2 for V in basis.vectors.values())
    assert basis.metadata["pair_separation"] > 0
    assert basis.metadata["n_pairs"] == 4 and basis.metadata["k"] == 2


def test_a_padded_pair_pass_equals_two_single_passes(tiny_qwen3):
    from vhack.basis import _sequences, nll_gradient
    model, tokenizer, adapter = tiny_student(tiny_qwen3, "svd_delta")
    prompt, hack, clean = _sequences(tokenizer, tiny_pairs(1)[0], "toy", False)
    assert len(hack) != len(clean)                                  # so one of them is padded
    pad = tokenizer.pad_token_id
    paired = nll_gradient(model, adapter, [prompt, prompt], [hack, clean], [-1.0, 1.0], pad)
    g_hack = nll_gradient(model, adapter, [prompt], [hack], [1.0], pad)
    g_clean = nll_gradient(model, adapter, [prompt], [clean], [1.0], pad)
    for name in paired:
        assert torch.allclose(paired[name], g_clean[name] - g_hack[name], atol=1e-5)


def test_refresh_extracts_from_the_current_weights(tiny_qwen3):
    from vhack.basis import extract_basis
    model, tokenizer, adapter = tiny_student(tiny_qwen3, "svd_delta")
    cfg = BasisConfig(k=2, solve_orth_m=1)
    before = extract_basis(model, tokenizer, adapter, tiny_pairs(), cfg, style="toy")
    with torch.no_grad():
        for view in adapter.flat_params().values():
            view.copy_(torch.randn(view.shape, generator=torch.Generator().manual_seed(0)))
    after = extract_basis(model, tokenizer, adapter, tiny_pairs(), cfg, style="toy")
    name = adapter.module_names[0]
    assert not torch.allclose(before.vectors[name], after.vectors[name], atol=1e-3)


def span_overlap(V: torch.Tensor, W: torch.Tensor) -> float:
    """‖V Wᵀ‖_F² / k: 1 for the same span, ≈ k/r for unrelated ones."""
    return float((V @ W.T).square().sum() / max(V.shape[0], W.shape[0]))


def test_shuffled_labels_change_the_span():
    r = 64
    axes = torch.linalg.qr(torch.randn(r, 3, generator=torch.Generator().manual_seed(70))).Q.T
    g_hack, g_clean = planted_gradients(r, axes[0], seed=71, weak_axes=axes[1:])
    real, _ = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(k=3), seed=0)
    shuffled, _ = basis_from({"m": g_hack}, {"m": g_clean}, BasisConfig(k=3, control="shuffled"), seed=0)
    flipped = hackward_differences(g_hack, g_clean) * torch.where(torch.arange(N_PAIRS) % 2 == 0, 1.0, -1.0)[:, None]
    assert span_overlap(real["m"], top_directions(flipped, 3)[0]) > 0.999   # why sign flips were no control
    assert span_overlap(real["m"], shuffled["m"]) < 0.9


# ---------------------------------------------------------------- the divergence-token basis

def test_divergence_windows_align_both_sides_at_the_first_differing_token():
    from vhack.basis import divergence_point, divergence_windows
    assert divergence_point([5, 6, 7, 9], [5, 6, 8]) == 2
    assert divergence_windows([5, 6, 7, 9, 2], [5, 6, 8, 2], m=3) == ((2, 5), (2, 4))   # clean ends at its EOS
    assert divergence_windows([5, 6, 7, 9, 2], [5, 6, 8, 2], m=1) == ((2, 3), (2, 3))
    with pytest.raises(ValueError, match="pair 'p7'.*same tokens"):
        divergence_point([1, 2], [1, 2], "p7")
    with pytest.raises(ValueError, match="divergence_tokens"):
        BasisConfig(method="svd", divergence_tokens=2)


def decision_token_gradient(model, adapter, prompt: list, hack: list, clean: list) -> tuple[int, dict]:
    """By hand: the shared prefix, one forward, ∇[log p(hack_j) − log p(clean_j)] (update space)."""
    j = next(i for i, (h, c) in enumerate(zip(hack, clean)) if h != c)
    logits = model(input_ids=torch.tensor([prompt + hack[:j]])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), -1)
    grads = torch.autograd.grad(logp[hack[j]] - logp[clean[j]], list(adapter.params.values()))
    return j, {name: g.reshape(-1) for name, g in zip(adapter.params, grads)}


def test_divergence_basis_is_the_decision_token_gradient(tiny_qwen3):
    from vhack.basis import _sequences, extract_basis
    model, tokenizer, adapter = tiny_student(tiny_qwen3, "svd_delta")
    pair = tiny_pairs(1)[0]
    prompt, hack, clean = _sequences(tokenizer, pair, "toy", False)
    model.eval()
    j, expected = decision_token_gradient(model, adapter, prompt, hack, clean)
    assert j > 0                                                    # a shared prefix precedes the decision
    basis = extract_basis(model, tokenizer, adapter, [pair], BasisConfig(method="divergence", k=1), style="toy")
    assert basis.metadata["divergence_positions"] == [j]
    for name, g in expected.items():
        assert basis.vectors[name].shape == (1, g.numel())
        assert torch.allclose(basis.vectors[name][0], g / g.norm(), atol=1e-4)   # normalised, +v hack-ward
        assert basis.singular_values[name][0] == pytest.approx(g.norm().item(), rel=1e-4)
    assert basis.metadata["pair_separation"] > 0


@pytest.mark.parametrize("control", ["none", "random", "shuffled", "nonhack"])
def test_divergence_basis_works_with_every_option_and_control(tiny_qwen3, control):
    from vhack.basis import extract_basis
    model, tokenizer, adapter = tiny_student(tiny_qwen3, "lora")
    cfg = BasisConfig(method="divergence", k=2, solve_orth_m=1, control=control, divergence_tokens=3)
    basis = extract_basis(model, tokenizer, adapter, tiny_pairs(), cfg, seed=1, style="toy")
    again = extract_basis(model, tokenizer, adapter, tiny_pairs(), cfg, seed=1, style="toy")
    b_modules = [n for n in adapter.module_names if n.endswith("lora_B")]
    for name, V in basis.vectors.items():
        assert torch.allclose(V @ V.T, torch.eye(V.shape[0]), atol=1e-4)
        assert torch.equal(V, again.vectors[name])
    assert all(basis.vectors[n].shape[0] == 2 for n in b_modules)
    assert sorted(basis.metadata["modules_without_directions"]) == sorted(set(adapter.module_names) - set(b_modules))
    assert select_directions(basis, k_use=1, drop_bottom_frac=0.5).k_total() <= len(b_modules)


def test_a_shared_nonzero_lora_b_init_gives_lora_a_directions(tiny_qwen3):
    from vhack.adapters import AdapterConfig, attach_adapter
    from vhack.basis import extract_basis
    from vhack.models import ModelSpec, load_model

    def student():
        model, tokenizer = load_model(ModelSpec(str(tiny_qwen3)))
        return model, tokenizer, attach_adapter(model, AdapterConfig(kind="lora", lora_b_init_std=0.02, init_seed=3))
    model, tokenizer, adapter = student()
    _, _, run_adapter = student()                                   # a run attaches the same start
    assert all(torch.equal(p, run_adapter.params[n]) for n, p in adapter.params.items())
    b = [p for n, p in adapter.params.items() if n.endswith("lora_B")]
    assert all(p.abs().sum() > 0 for p in b) and 0.015 < torch.cat([p.flatten() for p in b]).std() < 0.025
    basis = extract_basis(model, tokenizer, adapter, tiny_pairs(), BasisConfig(method="divergence", k=1),
                          style="toy")
    assert basis.metadata["modules_without_directions"] == []
    assert all(V.shape[0] == 1 for V in basis.vectors.values())


def test_refresh_re_extracts_a_divergence_basis_with_the_same_settings(tiny_qwen3):
    from pathlib import Path
    from vhack.grpo import TrainConfig
    from vhack.jobs import basis_config, make_refresh
    params = {"method": "divergence", "k": 1, "divergence_tokens": 2, "control": "random",
              "modes": ["run_tests", "sentinel"]}
    assert basis_config(params) == BasisConfig(method="divergence", k=1, divergence_tokens=2, control="random")
    cfg = TrainConfig.from_settings(dict(student="s", adapter="lora", problem_set="toy", teacher=None,
                                         train_modes=["run_tests"], steps=2, prompts_per_step=2, group_size=2,
                                         mix=0.0, lr=0.01, refresh_every=1, k_use=1))
    pairs = Path(__file__).parents[1] / "config" / "pairs" / "toy_21.yaml"
    refresh = make_refresh(str(pairs), params, cfg, style="toy", seed=3)
    model, tokenizer, adapter = tiny_student(tiny_qwen3, "svd_delta")
    basis = refresh(model, tokenizer, adapter)
    assert basis.metadata["method"] == "divergence" and basis.metadata["divergence_tokens"] == 2
    assert basis.metadata["control"] == "random" and basis.metadata["k_use"] == 1
    assert len(basis.metadata["divergence_positions"]) == basis.metadata["n_pairs"] < 21   # modes filtered
    assert all(V.shape[0] == 1 for V in basis.vectors.values())
