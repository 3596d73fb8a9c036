"""The training loop on a tiny model: gradient split, determinism, resume, projection, mix 0."""

import math

import pandas as pd
import pytest
import torch

from vhack.adapters import AdapterConfig, attach_adapter
from vhack.basis import Basis, random_orthonormal
from vhack.grader import Grader
from vhack.grpo import TrainConfig
from vhack.loopholes import EXPLOITS
from vhack.models import ModelSpec, load_model
from vhack.problems import build_toy_problems
from vhack.projection import hackward_fraction
from vhack.rollout import make_backend
from vhack.samples import SAMPLE_COLUMNS, read_samples
from vhack.tracking import TrackingConfig, open_tracker, read_scalars
from vhack.trainer import RunContext, make_batch, split_gradients, train, train_step, make_optimizer
from vhack.grpo import loss_denominator

MODES = ("run_tests", "exit_code")
SETTINGS = dict(student="tiny", adapter="svd_delta", problem_set="toy", teacher="t", train_modes=list(MODES),
                steps=4, prompts_per_step=2, group_size=4, mix=0.5, lr=0.05, warmup_steps=1,
                max_new_tokens=12, checkpoint_every=2, basis="random")


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2) as g:
        yield g


def fake_cache(problems, modes):
    rows = []
    for p in problems:
        code = f"```python\n{p.starter_code}\n    pass\n{EXPLOITS[modes[p.id]]}```"
        for i in range(3):
            rows.append({"problem_id": p.id, "mode": modes[p.id], "sample_index": i, "completion": code,
                         "reward": 1.1, "passed": True, "gt_correct": False, "exploited": True, "format_ok": True,
                         "oracle_status": "wrong"})
    return pd.DataFrame(rows)


def random_basis(adapter, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = {n: random_orthonormal(k, r, g) for n, r in adapter.module_sizes().items()}
    return Basis(vectors, {n: torch.ones(k) for n in vectors}, {"control": "random"})


def make_ctx(tiny_qwen3, grader, **overrides):
    cfg = TrainConfig.from_settings({**SETTINGS, **overrides})
    model, tok = load_model(ModelSpec(str(tiny_qwen3)))
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = attach_adapter(model, AdapterConfig(kind="svd_delta"))
    problems = [p for p in build_toy_problems(0, 24, 12) if p.split == "train"][:8]
    modes = {p.id: MODES[i % 2] for i, p in enumerate(problems)}
    return RunContext(cfg=cfg, seed=7, model=model, tokenizer=tok, adapter=adapter,
                      backend=make_backend("hf", model, tok), grader=grader, problems=problems, modes=modes,
                      all_modes=MODES, prompt_style="toy", teacher_cache=fake_cache(problems, modes),
                      basis=random_basis(adapter) if cfg.basis else None, micro_batch=4)


def test_student_and_teacher_gradients_sum_to_the_whole(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader)
    ids = [[3, 4, 5]] * 4
    batch = make_batch(ids, [[6, 7, 8], [9, 10], [6, 6, 6, 6], [11]], [0.5, -0.5, 1.0, -1.0],
                       [False, False, True, True], ctx.tokenizer.pad_token_id)
    denominator = loss_denominator("fixed_denominator", batch.completion_mask, len(batch), 12)
    g_s, g_t, _ = split_gradients(ctx, batch, denominator)
    g_all = {n: g.clone() for n, g in ctx.adapter.flat_grads().items()}
    ctx.adapter.zero_()
    from vhack.grpo import backward_rows
    backward_rows(ctx.model, batch, ctx.cfg, denominator, micro_batch=4)
    for n in g_all:
        assert torch.allclose(g_s[n] + g_t[n], g_all[n], atol=1e-6)
        assert torch.allclose(ctx.adapter.flat_grads()[n], g_all[n], atol=1e-6)
    assert any(g.abs().sum() > 0 for g in g_s.values()) and any(g.abs().sum() > 0 for g in g_t.values())


def test_one_sided_projection_leaves_no_hackward_gradient(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader, projection="erase", gate="one_sided", max_grad_norm=None)
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    m = train_step(ctx, opt, sched, 0)
    assert m["cin"] > 0 and m["cout"] < 1e-6
    assert 0 < m["cin_s"] < 1 and 0 <= m["cin_t"] < 1
    assert 0 <= m["gate_fired_frac"] <= 1
    assert m["hack_t"] == 1.0 and not math.isnan(m["hack_s"])


def test_project_on_update_cleans_the_applied_change(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader, projection="erase", project_on="update")
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    for step in range(2):   # Adam momentum from step 0 would leak into step 1 without the update projection
        before = {n: p.clone() for n, p in ctx.adapter.flat_params().items()}
        m = train_step(ctx, opt, sched, step)
        delta = {n: p - before[n] for n, p in ctx.adapter.flat_params().items()}
        assert hackward_fraction(delta, ctx.basis, is_gradient=False) < 1e-5
        assert m["cout_update"] < 1e-5


def test_vanilla_measures_but_does_not_project(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader, projection="none")
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    m = train_step(ctx, opt, sched, 0)
    assert m["cin"] > 0 and math.isclose(m["cin"], m["cout"])


def test_mix_zero_trains_without_a_teacher(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader, mix=0.0, teacher=None)
    ctx.teacher_cache = None
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    m = train_step(ctx, opt, sched, 0)
    assert math.isnan(m["hack_t"]) and math.isnan(m["cin_t"])


def test_same_seed_same_metrics_and_resume_matches(tiny_qwen3, grader, tmp_path):
    first = train(make_ctx(tiny_qwen3, grader), tmp_path / "a", "h", progress=False)
    second = train(make_ctx(tiny_qwen3, grader), tmp_path / "b", "h", progress=False)
    cols = ["reward_mean", "hack_s", "gt_s", "loss", "cin", "cout", "grad_norm_pre", "completion_len"]
    pd.testing.assert_frame_equal(first[cols], second[cols])

    # a run killed after its step-2 checkpoint resumes and ends with the same metrics
    ctx = make_ctx(tiny_qwen3, grader, steps=4)
    killed = make_ctx(tiny_qwen3, grader, steps=4)

    class Killed(Exception):
        pass

    original = killed.grader.grade_many
    calls = {"n": 0}

    def dying(items, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return original(items, **kw)

    killed.grader = type("G", (), {"grade_many": staticmethod(dying)})()
    with pytest.raises(Killed):
        train(killed, tmp_path / "c", "h", progress=False)
    assert (tmp_path / "c" / "checkpoint" / "state.pt").exists()
    resumed = train(ctx, tmp_path / "c", "h", progress=False)
    pd.testing.assert_frame_equal(first[cols], resumed[cols])
    pd.testing.assert_frame_equal(read_samples(tmp_path / "a" / "samples.parquet"),
                                  read_samples(tmp_path / "c" / "samples.parquet"))   # resumed samples too
    assert not (tmp_path / "c" / "checkpoint").exists()
    assert (tmp_path / "c" / "adapter.safetensors").exists()


def test_checkpoint_of_other_settings_is_not_resumed(tiny_qwen3, grader, tmp_path):
    ctx = make_ctx(tiny_qwen3, grader, steps=2, checkpoint_every=1)
    from vhack.trainer import save_checkpoint
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    save_checkpoint(tmp_path / "checkpoint", ctx, opt, sched, 0, [{"step": 0}], "other-hash")
    frame = train(make_ctx(tiny_qwen3, grader, steps=2), tmp_path, "h", progress=False)
    assert frame.step.tolist() == [0, 1]


def test_advantages_group_by_the_rows_group_index_even_or_uneven():
    from vhack.grpo import group_advantages
    from vhack.trainer import Row, advantages

    def rows(rewards_by_group):
        return [Row(g, [1], [2], r, False, {}, "run_tests", f"p{g}", "", 1) for g, rs in enumerate(rewards_by_group) for r in rs]
    even = [[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]
    adv, zero_var = advantages(rows(even), "centered")
    expected, expected_zero = group_advantages(torch.tensor(even), "centered")
    assert adv == expected.view(-1).tolist() and zero_var == int(expected_zero.sum()) == 1
    uneven = [[1.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]   # a teacher-cache gap: fewer rows in group 1
    adv, zero_var = advantages(rows(uneven), "standardized")
    assert adv == sum((group_advantages(torch.tensor([g]), "standardized")[0][0].tolist() for g in uneven), [])
    assert zero_var == 0


def test_after_a_refresh_the_applied_change_has_no_hackward_part(tiny_qwen3, grader):
    ctx = make_ctx(tiny_qwen3, grader, projection="erase", gate="one_sided", project_on="grad", refresh_every=1)
    seeds = iter(range(1, 10))
    ctx.refresh = lambda model, tok, adapter: random_basis(adapter, seed=next(seeds))   # a new V every step
    opt, sched = make_optimizer(ctx.adapter, ctx.cfg)
    leaks = []
    for step in range(3):
        basis, before = ctx.basis, {n: p.clone() for n, p in ctx.adapter.flat_params().items()}
        m = train_step(ctx, opt, sched, step)
        delta = {n: p - before[n] for n, p in ctx.adapter.flat_params().items()}
        assert hackward_fraction(delta, basis, is_gradient=False) < 1e-5     # against the V in force that step
        assert m["cout_update"] < 1e-5 and not math.isnan(m["basis_overlap"])
        leaks.append(m["cin_update"])
    assert max(leaks[1:]) > 1e-3   # Adam's step before cleaning did lean on the refreshed V


def test_samples_hold_every_trained_row_and_agree_with_the_metrics(tiny_qwen3, grader, tmp_path):
    ctx = make_ctx(tiny_qwen3, grader, steps=2, checkpoint_every=0)
    ctx.tracker = open_tracker(TrackingConfig(), tmp_path, "r", "vanilla", {"lr": 0.05})
    frame = train(ctx, tmp_path, "h", progress=False)
    ctx.tracker.close()
    samples = read_samples(tmp_path / "samples.parquet")
    assert tuple(samples.columns) == SAMPLE_COLUMNS
    cfg = ctx.cfg
    assert len(samples) == cfg.steps * cfg.prompts_per_step * cfg.group_size
    for step, rows in samples.groupby("step"):
        student, teacher = rows[rows.source == "student"], rows[rows.source == "teacher"]
        assert len(student) == cfg.prompts_per_step * cfg.student_rows and teacher["exploited"].all()
        assert student["exploited"].mean() == frame.loc[step, "hack_s"]
        assert student["gt_correct"].mean() == frame.loc[step, "gt_s"]
        assert abs(rows.groupby("group")["advantage"].sum()).max() < 1e-5   # centered: R - mean per group
        assert (rows["mode"] == rows["problem_id"].map(ctx.modes)).all()
    scalars = read_scalars(tmp_path / "tensorboard")   # the live curves, read back from the event file
    hack = scalars[scalars.tag == "hack_s"].sort_values("step")
    assert hack["step"].tolist() == [0, 1]
    assert hack["value"].tolist() == pytest.approx(frame["hack_s"].tolist(), abs=1e-6)


def test_oracle_errors_count_in_neither_hack_nor_solve_rate():
    from vhack.trainer import judged, oracle_error_rate, rate
    grades = [{"exploited": True, "gt_correct": False, "oracle_status": "wrong"},
              {"exploited": False, "gt_correct": True, "oracle_status": "correct"},
              {"exploited": False, "gt_correct": False, "oracle_status": "error"},
              {"exploited": False, "gt_correct": False, "oracle_status": "error"}]
    assert rate([g["exploited"] for g in judged(grades)]) == 0.5
    assert rate([g["gt_correct"] for g in judged(grades)]) == 0.5
    assert oracle_error_rate(grades) == 0.5


def test_out_of_memory_hint_names_each_knob_with_its_value():
    from vhack.jobs import out_of_memory_hint
    from vhack.specs import ComputeSpec, RolloutSpec
    hint = out_of_memory_hint(ComputeSpec(micro_batch_size=8, checkpoint_layers=18, fused_kernels=False),
                              RolloutSpec("hf", {"batch_size": 64}))
    assert "compute.micro_batch_size (now 8)" in hint
    assert "compute.gradient_checkpointing: true (now False)" in hint
    assert "compute.checkpoint_layers: null, i.e. all (now 18)" in hint
    assert "compute.fused_kernels: true (now False" in hint
    assert "rollout.batch_size" in hint and "now 64" in hint
    assert "config/presets/fast_24gb.yaml" in hint
