import pytest
import torch

from vhack.basis import Basis
from vhack.projection import (ProjectionConfig, hackward_fraction, project_gradients_, project_update_,
                              snapshot)

AXES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # module "a": r = 3, k = 2


def hand_basis() -> Basis:
    return Basis({"a": AXES.clone(), "b": torch.tensor([[0.0, 1.0]])},
                 {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0])}, {})


def grads_for(update_a: list[float], update_b: list[float]) -> dict[str, torch.Tensor]:
    return {"a": -torch.tensor(update_a), "b": -torch.tensor(update_b)}  # g = −u


@pytest.mark.parametrize("cfg, expected", [
    (ProjectionConfig(gate="one_sided"), [0.0, -3.0, 5.0]),                  # only the hack-ward c_0 = 2 goes
    (ProjectionConfig(gate="no_gate"), [0.0, 0.0, 5.0]),                     # all of span(V) goes
    (ProjectionConfig(gate="reverse"), [-2.0, -3.0, 5.0]),                   # hack-ward part flipped
    (ProjectionConfig(gate="one_sided", overshoot=1.5), [-1.0, -3.0, 5.0]),  # 150% removed
    (ProjectionConfig(mode="none", gate="reverse"), [2.0, -3.0, 5.0]),      # measure only
])
def test_gates_on_hand_made_vectors(cfg, expected):
    grads = grads_for([2.0, -3.0, 5.0], [4.0, -1.0])
    project_gradients_(grads, hand_basis(), cfg)
    assert torch.allclose(-grads["a"], torch.tensor(expected))
    if cfg.gate == "no_gate":  # nothing left in span(V), anti-hack motion included
        assert torch.allclose(AXES @ -grads["a"], torch.zeros(2))
        assert torch.allclose(-grads["b"], torch.tensor([4.0, 0.0]))
    else:  # module b has c = −1 < 0: nothing hack-ward, left alone
        assert torch.allclose(-grads["b"], torch.tensor([4.0, -1.0]))


def test_stats_take_relu_before_aggregating():
    grads = grads_for([2.0, -3.0, 5.0], [4.0, -1.0])
    stats = project_gradients_(grads, hand_basis(), ProjectionConfig())
    norm = (4 + 9 + 25 + 16 + 1) ** 0.5
    assert stats.cin == pytest.approx(2.0 / norm)   # the −3 and −1 components do not cancel the +2
    assert stats.cout == pytest.approx(0.0, abs=1e-7)
    assert stats.gate_fired_frac == pytest.approx(0.5)
    assert stats.norm_before == pytest.approx(norm)
    assert stats.norm_after == pytest.approx((norm ** 2 - 4) ** 0.5)


def test_preserve_magnitude_rescales_each_module():
    grads = grads_for([2.0, -3.0, 5.0], [4.0, -1.0])
    project_gradients_(grads, hand_basis(), ProjectionConfig(preserve_magnitude=True))
    assert grads["a"].norm() == pytest.approx(38 ** 0.5)
    assert torch.allclose(-grads["a"] / grads["a"].norm(), torch.tensor([0.0, -3.0, 5.0]) / 34 ** 0.5)


def test_works_in_place_on_views_of_a_flat_buffer():
    flat = torch.cat([-torch.tensor([2.0, -3.0, 5.0]), -torch.tensor([4.0, 1.0])])
    views = {"a": flat[:3], "b": flat[3:]}
    project_gradients_(views, hand_basis(), ProjectionConfig())
    assert torch.allclose(flat, torch.tensor([0.0, 3.0, -5.0, -4.0, 0.0]))


def random_basis(widths: dict[str, int], ks: dict[str, int], seed: int = 0) -> Basis:
    g = torch.Generator().manual_seed(seed)
    vectors = {n: torch.linalg.qr(torch.randn(r, ks[n], generator=g)).Q.T.contiguous() for n, r in widths.items()}
    return Basis(vectors, {n: torch.ones(ks[n]) for n in widths}, {})


def reference_projection(u: torch.Tensor, V: torch.Tensor, cfg: ProjectionConfig) -> torch.Tensor:
    c = V @ u
    removed = {"one_sided": c.clamp_min(0), "no_gate": c, "reverse": 2 * c.clamp_min(0)}[cfg.gate]
    projected = u - cfg.overshoot * removed @ V
    return projected * u.norm() / projected.norm() if cfg.preserve_magnitude else projected


@pytest.mark.parametrize("cfg", [ProjectionConfig(gate="one_sided", overshoot=0.5),
                                 ProjectionConfig(gate="no_gate", overshoot=1.1),
                                 ProjectionConfig(gate="reverse", overshoot=0.3, preserve_magnitude=True)])
def test_batched_groups_match_a_per_module_loop(cfg):
    widths = {"q": 16, "k": 8, "v": 8, "o": 16, "up": 24, "zero_k": 8}
    ks = {"q": 3, "k": 2, "v": 3, "o": 1, "up": 4, "zero_k": 0}
    basis = random_basis(widths, ks)
    g = torch.Generator().manual_seed(1)
    grads = {n: torch.randn(r, generator=g) for n, r in widths.items()}
    expected = {n: -reference_projection(-grads[n], basis.vectors[n], cfg) for n in grads}
    stats = project_gradients_(grads, basis, cfg)
    for n in grads:
        assert torch.allclose(grads[n], expected[n], atol=1e-6), n
    assert stats.cout == pytest.approx(hackward_fraction(grads, basis), abs=1e-6)  # cout measured after


def test_hackward_fraction_signs_gradients_and_updates():
    basis = hand_basis()
    update = {"a": torch.tensor([2.0, 0.0, 0.0]), "b": torch.tensor([0.0, 0.0])}
    assert hackward_fraction(update, basis, is_gradient=False) == pytest.approx(1.0)
    assert hackward_fraction(update, basis) == pytest.approx(0.0)  # as a gradient it points anti-hack
    assert hackward_fraction({n: -u for n, u in update.items()}, basis) == pytest.approx(1.0)


def test_unknown_module_is_a_clear_error():
    with pytest.raises(KeyError, match="no basis vectors"):
        project_gradients_({"c": torch.ones(3)}, hand_basis(), ProjectionConfig())


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="projection.gate"):
        ProjectionConfig(gate="sideways")


def test_update_projection_leaves_no_hackward_change_after_adam():
    widths, ks = {"a": 12, "b": 12, "c": 20}, {"a": 2, "b": 3, "c": 1}
    basis = random_basis(widths, ks, seed=3)
    params = {n: torch.nn.Parameter(torch.zeros(r)) for n, r in widths.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=0.1, weight_decay=0.01)
    cfg = ProjectionConfig()
    g = torch.Generator().manual_seed(4)
    leaks = []
    for _ in range(3):
        for n, p in params.items():  # gradients with a strong hack-ward pull (−g along +v)
            p.grad = torch.randn(widths[n], generator=g) - 3 * basis.vectors[n].sum(0)
        project_gradients_({n: p.grad for n, p in params.items()}, basis, cfg)
        before = snapshot(params)
        optimizer.step()
        leaks.append(hackward_fraction({n: params[n].detach() - before[n] for n in params}, basis,
                                       is_gradient=False))
        stats = project_update_({n: p.data for n, p in params.items()}, before, basis, cfg)
        applied = {n: params[n].detach() - before[n] for n in params}
        assert hackward_fraction(applied, basis, is_gradient=False) == pytest.approx(0.0, abs=1e-6)
        assert stats.cout == pytest.approx(0.0, abs=1e-6)
    assert max(leaks) > 0.01, leaks  # Adam's per-coordinate scaling lets hack-ward motion back in


def test_gate_fired_frac_counts_only_modules_with_directions():
    basis = hand_basis()
    basis.vectors["c"], basis.singular_values["c"] = torch.zeros(0, 2), torch.zeros(0)   # e.g. LoRA A at B = 0
    grads = {**grads_for([2.0, -3.0, 5.0], [4.0, -1.0]), "c": torch.tensor([1.0, 1.0])}
    stats = project_gradients_(grads, basis, ProjectionConfig())
    assert stats.gate_fired_frac == pytest.approx(0.5)     # a fired, b did not; c has nothing to fire
    assert stats.n_modules == 3
