"""Cheaper rollouts (issue 22): `rollout.ode_solver` / `rollout.ode_steps` integrate the deterministic
prefix and suffix on a sub-grid that lands exactly on the SDE step's sigma_k and sigma_{k+1}; the SDE
step, its log-prob and the on-policy ratio stay exact; forwards are counted as made."""

import dataclasses
from fractions import Fraction

import pytest
import torch

from fgrpo.algorithm import ode_step, sde_step
from fgrpo.algorithm.ode_grid import (
    evaluations,
    expected_evaluations_per_video,
    subgrid_indices,
    trajectory_nodes,
)
from fgrpo.trainer import ode_solvers
from fgrpo.trainer import rollout as rollout_mod
from fgrpo.trainer.ode_solvers import OdeConfig
from fgrpo.trainer.rollout import sample, step_noise_std_scale, video_generators
from fgrpo.trainer.trainer import Trainer
from tests.helpers.forward_rows import sampling_forward_rows
from tests.helpers.recipes import small_recipe

SOLVERS = ("euler", "unipc", "dpmpp_2m")


def _recipe(tiny_model_dir, **rollout):
    r = small_recipe(tiny_model_dir, max_steps=1)
    R = dataclasses.replace
    return R(r, rollout=R(r.rollout, steps=6, **rollout), timesteps=R(r.timesteps, window=(1, 5)))


def _trainer(tiny_model_dir, tmp_path, mode: str = "flash", **rollout) -> Trainer:
    r = _recipe(tiny_model_dir, **rollout)
    return Trainer(dataclasses.replace(r, algorithm=dataclasses.replace(r.algorithm, mode=mode)), tmp_path)


# --- the sub-grid -------------------------------------------------------------------------------


def test_subgrid_is_every_step_by_default_and_rounded_points_of_the_grid_otherwise():
    assert subgrid_indices(6, None) == subgrid_indices(6, 6) == list(range(7))
    assert subgrid_indices(20, 10) == list(range(0, 21, 2))  # Wan's 10-step grid inside its 20-step one
    assert subgrid_indices(10, 4) == [0, 3, 5, 8, 10]
    assert subgrid_indices(6, 1) == [0, 6]


@pytest.mark.parametrize("k", range(6))
def test_nodes_hold_the_sde_steps_sigmas(k):
    nodes = trajectory_nodes(subgrid_indices(6, 2), 0, 6, [k])
    assert k in nodes and k + 1 in nodes and nodes[nodes.index(k) + 1] == k + 1
    assert nodes[0] == 0 and nodes[-1] == 6
    assert trajectory_nodes(subgrid_indices(6, 2), 0, k, []) == [i for i in nodes if i <= k]  # a shared prefix


def test_expected_evaluations_count_the_drawn_steps():
    n = expected_evaluations_per_video(6, 2, False, (1, 5), [], 4, True, False)
    assert n == Fraction(sum(evaluations(subgrid_indices(6, 2), 0, 6, [k]) for k in range(1, 5)), 4)
    assert expected_evaluations_per_video(6, None, False, (1, 5), [], 4, True, False) == 6
    assert expected_evaluations_per_video(6, 3, True, (1, 5), [], 4, True, False) == 6  # full-trajectory
    # share_prefix with iso-temporal groups: the prefix once for the G videos
    shared = expected_evaluations_per_video(6, None, False, (2, 3), [], 4, True, True)
    assert shared == Fraction(2, 4) + 4
    # independent draws: the group's earliest step starts everyone's continuation
    indep = expected_evaluations_per_video(6, None, False, (2, 4), [], 2, False, True)
    # (k0, k1) uniform on {2,3}^2: min 2 unless both 3; per video prefix m/2 + (6 - m)
    assert indep == Fraction(3, 4) * (1 + 4) + Fraction(1, 4) * (Fraction(3, 2) + 3)


# --- the sampler --------------------------------------------------------------------------------


def _inputs(t: Trainer, n: int, seed: int = 0):
    p = t.policy
    x0 = torch.randn(n, *p.latent_shape, generator=torch.Generator().manual_seed(seed))
    return x0, p.encode(t.sampler.next(n)), p.negative_context(n)


def _euler_reference(p, x0, ctx, neg, mask):
    """The sampler before issue 22: every row, every grid step, Euler unless masked SDE."""
    sig, x, gens = p.sigmas.float(), x0.clone(), video_generators(list(range(x0.shape[0])))
    text, scale = rollout_mod.text_input(ctx, neg, p.cfg_scale, torch.float32)
    for i in range(mask.shape[1]):
        s, s_next = sig[i].expand(x.shape[0]), sig[i + 1].expand(x.shape[0])
        v = rollout_mod.guided_velocity(p.transformer, x, s, text, scale, torch.float32)
        x_new = ode_step(x, v, s, s_next)
        rows = mask[:, i].nonzero().flatten().tolist()
        if rows:
            eps = torch.stack([torch.randn(x.shape[1:], generator=gens[r]) for r in rows])
            s_t = step_noise_std_scale(sig, torch.full((len(rows),), i), p.noise)
            x_new[rows] = sde_step(x[rows], v[rows], s[rows], s_next[rows], s_t, noise=eps).prev_sample.float()
        x = x_new
    return x


@pytest.mark.parametrize("ode_steps", [None, 6])
def test_euler_on_the_whole_grid_is_bitwise_the_sampler_before(tiny_model_dir, tmp_path, ode_steps):
    t = _trainer(tiny_model_dir, tmp_path)
    p = t.policy
    x0, ctx, neg = _inputs(t, 4)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[[0, 1, 2], [1, 4, 4]] = True  # one video without an SDE step
    gens = video_generators(list(range(4)))
    ode = OdeConfig("euler", ode_steps)
    out, _ = sample(p.transformer, x0, ctx, neg, p.sigmas, mask, p.noise, p.cfg_scale, gens, 8, ode=ode)
    assert torch.equal(out, _euler_reference(p, x0, ctx, neg, mask))


def _spy_calls(monkeypatch) -> list[tuple[int, list[float]]]:
    """(rows, sigmas) of every transformer call made by the sampler."""
    calls = []
    real = rollout_mod.guided_velocity

    def spy(transformer, x, sigma, *a, **kw):
        calls.append((x.shape[0], sigma.tolist()))
        return real(transformer, x, sigma, *a, **kw)

    monkeypatch.setattr(rollout_mod, "guided_velocity", spy)
    return calls


@pytest.mark.parametrize("solver", SOLVERS)
def test_subgrid_lands_exactly_on_the_sde_steps_sigmas(tiny_model_dir, tmp_path, monkeypatch, solver):
    t = _trainer(tiny_model_dir, tmp_path)
    p = t.policy
    sig, grid = p.sigmas.float(), subgrid_indices(6, 2)
    segments = []
    real_init = ode_solvers.SegmentSolver.__init__

    def record(self, name, node_sigmas):
        segments.append(node_sigmas.clone())
        real_init(self, name, node_sigmas)

    monkeypatch.setattr(ode_solvers.SegmentSolver, "__init__", record)
    calls = _spy_calls(monkeypatch)
    for k in (1, 2, 4):  # one video each: its evaluations in order
        calls.clear()
        segments.clear()
        x0, ctx, neg = _inputs(t, 1, seed=k)
        mask = torch.zeros(1, 6, dtype=torch.bool)
        mask[0, k] = True
        gens = video_generators([k])
        ode = OdeConfig(solver, 2)
        _, trans = sample(p.transformer, x0, ctx, neg, p.sigmas, mask, p.noise, p.cfg_scale, gens, 8, ode=ode)
        nodes = trajectory_nodes(grid, 0, 6, [k])
        assert [s for _, (s,) in calls] == [float(sig[i]) for i in nodes[:-1]]  # evaluated on grid sigmas
        assert trans.step.tolist() == [k]  # the SDE transition σ_k → σ_{k+1}
        if solver != "euler":  # the prefix's solver ends on σ_k, the suffix's starts on σ_{k+1}, bit for bit
            assert [torch.equal(s, sig[_indices(sig, s)]) for s in segments] == [True] * len(segments)
            assert any(torch.equal(s[-1], sig[k]) for s in segments) == (k > 0)
            assert torch.equal(segments[-1][0], sig[k + 1]) and float(segments[-1][-1]) == 0.0


def test_a_micro_batch_makes_the_evaluations_its_rows_need(tiny_model_dir, tmp_path, monkeypatch):
    t = _trainer(tiny_model_dir, tmp_path)
    p = t.policy
    x0, ctx, neg = _inputs(t, 3)
    ks = [1, 2, 4]
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[[0, 1, 2], ks] = True
    calls = _spy_calls(monkeypatch)
    gens = video_generators([1, 2, 3])
    _, trans = sample(
        p.transformer, x0, ctx, neg, p.sigmas, mask, p.noise, p.cfg_scale, gens, 8, ode=OdeConfig("unipc", 2)
    )
    assert sorted(zip(trans.video.tolist(), trans.step.tolist())) == [(0, 1), (1, 2), (2, 4)]
    assert sum(rows for rows, _ in calls) == sum(evaluations(subgrid_indices(6, 2), 0, 6, [k]) for k in ks)


def _indices(sig: torch.Tensor, node_sigmas: torch.Tensor) -> list[int]:
    """Grid indices of node sigmas, each of which must be a grid sigma exactly."""
    return [int((sig == v).nonzero().item()) for v in node_sigmas.float()]


@pytest.mark.parametrize("solver", SOLVERS)
def test_prefix_alone_equals_the_prefix_before_the_sde_step(tiny_model_dir, tmp_path, solver):
    """What share_prefix relies on: integrating σ_0 → σ_k alone reaches the state the SDE step starts from."""
    t = _trainer(tiny_model_dir, tmp_path)
    p = t.policy
    x0, ctx, neg = _inputs(t, 2)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 3] = True
    args = (ctx, neg, p.sigmas)
    rest = (p.noise, p.cfg_scale, video_generators([5, 6]), 8)
    ode = OdeConfig(solver, 3)
    _, trans = sample(p.transformer, x0, *args, mask, *rest, ode=ode)
    mid, _ = sample(p.transformer, x0, *args, torch.zeros_like(mask), *rest, end=torch.tensor([3, 3]), ode=ode)
    torch.testing.assert_close(trans.x, mid, rtol=1e-6, atol=1e-6)


def test_fewer_steps_change_the_samples_but_not_wildly(tiny_model_dir, tmp_path):
    t = _trainer(tiny_model_dir, tmp_path)
    p = t.policy
    x0, ctx, neg = _inputs(t, 2)
    none = torch.zeros(2, 6, dtype=torch.bool)
    gens = video_generators([1, 2])
    full, _ = sample(p.transformer, x0, ctx, neg, p.sigmas, none, p.noise, p.cfg_scale, gens, 8)
    for solver in ("unipc", "dpmpp_2m"):
        out, _ = sample(
            p.transformer, x0, ctx, neg, p.sigmas, none, p.noise, p.cfg_scale, gens, 8, ode=OdeConfig(solver, 3)
        )
        assert torch.isfinite(out).all() and not torch.equal(out, full)
        assert float((out - full).norm() / full.norm()) < 0.5


# --- a Flash-GRPO step end to end ---------------------------------------------------------------


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("solver", SOLVERS)
def test_a_flash_step_with_fewer_steps_stays_on_policy(tiny_model_dir, tmp_path, monkeypatch, solver, share_prefix):
    t = _trainer(tiny_model_dir, tmp_path, ode_solver=solver, ode_steps=3, share_prefix=share_prefix)
    r = t.recipe
    P, G = r.rollout.prompts_per_step, r.rollout.group_size
    rows = sampling_forward_rows(monkeypatch, "fgrpo.trainer.flash_grpo.sample")
    res = t.run_step(t.sampler.next(P), lambda: None)
    m = res.metrics
    assert res.applied and m["ratio_dev_max"] == 0.0 and m["clip_frac"] == 0.0
    grid = subgrid_indices(6, 3)
    ks = m["timestep_indices"]  # one per prompt (iso-temporal)
    if share_prefix:
        made = sum(evaluations(grid, 0, k, []) + G * evaluations(grid, k, 6, [k]) for k in ks)
    else:
        made = G * sum(evaluations(grid, 0, 6, [k]) for k in ks)
    assert sum(rows) == made < P * G * 6
    # compute/forward_passes counts what was made: the rollout's (x2 for CFG) and the training pass's
    cfg = 2 if r.rollout.cfg_scale != 1.0 else 1
    training = 2 * P * G * cfg  # recomputed old log-probs + the loss pass, one transition per video
    cost = t.compute.cost
    assert cost is not None
    assert cost.forward_passes == made * cfg + training


def test_fast_mode_draws_steps_per_video_and_stays_on_policy(tiny_model_dir, tmp_path):
    t = _trainer(tiny_model_dir, tmp_path, mode="fast", ode_solver="unipc", ode_steps=2)
    res = t.run_step(t.sampler.next(t.recipe.rollout.prompts_per_step), lambda: None)
    assert res.applied and res.metrics["ratio_dev_max"] == 0.0


# --- the recipe ---------------------------------------------------------------------------------


def _problems(tiny_model_dir, mode="flash", **rollout):
    from fgrpo.recipe.validate import recipe_problems

    r = _recipe(tiny_model_dir, **rollout)
    return recipe_problems(dataclasses.replace(r, algorithm=dataclasses.replace(r.algorithm, mode=mode)))


def test_config_errors_name_the_field(tiny_model_dir):
    assert _problems(tiny_model_dir, ode_solver="unipc", ode_steps=3) == []
    (e,) = _problems(tiny_model_dir, mode="full-trajectory", ode_solver="dpmpp_2m")
    assert e.startswith("rollout.ode_solver:") and "full-trajectory" in e
    (e,) = _problems(tiny_model_dir, mode="full-trajectory", ode_steps=3)
    assert e.startswith("rollout.ode_steps:")
    (e,) = _problems(tiny_model_dir, ode_steps=7)
    assert e.startswith("rollout.ode_steps:") and "at most rollout.steps=6" in e
    assert any(e.startswith("rollout.ode_steps:") for e in _problems(tiny_model_dir, ode_steps=0))
    assert any(e.startswith("rollout.ode_solver:") for e in _problems(tiny_model_dir, ode_solver="heun"))


def test_the_cli_refuses_a_solver_in_full_trajectory_mode(tmp_path):
    from tests.conftest import run_fgrpo

    res = run_fgrpo(
        "plan", "recipes/tiny.py", "--algorithm.mode", "full-trajectory", "--rollout.ode-solver", "unipc", timeout=300
    )
    assert res.returncode == 2 and "rollout.ode_solver" in res.stderr, res.stderr[-2000:]


# --- the planner --------------------------------------------------------------------------------


def _paper_like(tiny_model_dir, **rollout):
    r = small_recipe(tiny_model_dir)
    R = dataclasses.replace
    return R(r, rollout=R(r.rollout, steps=20, **rollout), timesteps=R(r.timesteps, window=(0, 10)))


def test_ode_steps_halve_the_planned_rollout_forwards(tiny_model_dir):
    from fgrpo.planner.phases import Phase, Sizes
    from fgrpo.planner.plan import rollout_evaluations, step_flops

    full, half = _paper_like(tiny_model_dir), _paper_like(tiny_model_dir, ode_steps=10, ode_solver="unipc")
    assert rollout_evaluations(full) == 20
    # every other grid point, plus σ_{k+1} (k even) or σ_k (k odd): one evaluation beyond half
    assert rollout_evaluations(half) == 11
    phases = [
        Phase("rollout", 0, {}, {"first": 150, "later": 100}),
        Phase("VAE decode", 0, {}, {"decode": 7}),
        Phase("training", 0, {}, {"train": 9}),
        Phase("text encoding", 0, {}, {"batch": 0}),
    ]
    sizes = Sizes(8, 4, 8, 1, 0, (16, 1, 2, 2), 4, 8)
    assert step_flops(full, sizes, phases)["rollout"] == (150 + 100 * 19) * 2
    assert step_flops(half, sizes, phases)["rollout"] == (150 + 100 * 10) * 2
    shared = _paper_like(tiny_model_dir, ode_steps=10, share_prefix=True)
    assert rollout_evaluations(shared) < rollout_evaluations(half)  # the prefix once per group


def test_plan_shows_the_rollouts_evaluations(tiny_model_dir):
    import json

    from fgrpo.planner.plan import rollout_evaluations
    from fgrpo.recipe.io import load_recipe_file
    from tests.conftest import REPO, run_fgrpo

    res = run_fgrpo("plan", "recipes/tiny.py", "--json", "--rollout.ode-steps", "4", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    plan = json.loads(res.stdout)
    r = load_recipe_file(REPO / "recipes" / "tiny.py")
    r = dataclasses.replace(r, rollout=dataclasses.replace(r.rollout, ode_steps=4))
    assert plan["rollout_evaluations_per_video"] == float(rollout_evaluations(r)) < r.rollout.steps
    assert any(n.startswith("rollout: ") and "ode_steps=4" in n for n in plan["notes"])
