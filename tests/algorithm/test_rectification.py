import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fgrpo.algorithm import (
    lambda_t,
    noise_scale,
    rectification_weights,
    sde_step,
    wan_sigmas,
)
from fgrpo.distributed.process_group import global_mean

SIG = wan_sigmas(20, 3.0)
SIGMA_MAX = float(SIG[1])


def _inv_lambda(i):
    s_t = noise_scale("wan", SIG[i], SIGMA_MAX, 0.0)
    return 1.0 / lambda_t(SIG[i], SIG[i + 1], s_t)


def test_reference_values_of_inverse_lambda():
    # docs section 3.4: 7.4770 at t = 999 (index 0) down to 3.7754 at t = 785 (index 9)
    assert float(_inv_lambda(0)) == pytest.approx(7.4770, abs=1e-3)
    assert float(_inv_lambda(9)) == pytest.approx(3.7754, abs=1e-3)
    vals = torch.stack([_inv_lambda(i) for i in range(10)])
    assert torch.all(vals[1:] < vals[:-1])


def test_lambda_per_sample_tensor():
    idx = torch.tensor([0, 9])
    s_t = noise_scale("wan", SIG[idx], SIGMA_MAX, 0.0)
    lam = lambda_t(SIG[idx], SIG[idx + 1], s_t)
    torch.testing.assert_close(1.0 / lam, torch.stack([_inv_lambda(0), _inv_lambda(9)]))


def test_weights_average_one_and_keep_ratios():
    inv = torch.tensor([7.0, 3.5, 5.0, 4.5])
    w = rectification_weights(inv)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[0] / w[1]) == pytest.approx(2.0)
    # with a global mean from other ranks the local weights need not average 1
    w_g = rectification_weights(inv, torch.tensor(10.0))
    torch.testing.assert_close(w_g, inv / 10.0)
    assert float(global_mean(inv)) == pytest.approx(5.0)  # no process group -> local mean


def _mean_grad_norms(step_indices, per_index, rectify, seed=0):
    """Per-timestep mean (over Monte-Carlo eps) of |d(-w logp)/dv| for one global batch."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(step_indices).repeat_interleave(per_index)
    shape = (idx.numel(), 4, 2, 4, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    sigma, sigma_next = SIG[idx], SIG[idx + 1]
    s_t = noise_scale("wan", sigma, SIGMA_MAX, 0.0)
    # rollout: sample from the step with the (detached) old velocity, which equals v
    old = sde_step(x, v.detach(), sigma, sigma_next, s_t, generator=g)
    new = sde_step(x, v, sigma, sigma_next, s_t, prev_sample=old.prev_sample)
    if rectify:
        w = rectification_weights(1.0 / lambda_t(sigma, sigma_next, s_t))
    else:
        w = torch.ones(idx.numel(), dtype=torch.float64)
    loss = -(w * new.log_prob).sum()
    (grad,) = torch.autograd.grad(loss, v)
    norms = grad.flatten(1).norm(dim=1)
    return torch.stack([norms[idx == i].mean() for i in step_indices])


def test_rectification_equalises_gradient_norm_across_timesteps():
    steps = [0, 3, 6, 9]
    plain = _mean_grad_norms(steps, 400, rectify=False)
    rect = _mean_grad_norms(steps, 400, rectify=True)
    lam = torch.stack([1.0 / _inv_lambda(i) for i in steps])
    # without rectification the gradient grows with lambda(t): ~2x from t=999 to t=785
    assert float(plain.max() / plain.min()) > 1.5
    torch.testing.assert_close(plain / plain[0], lam / lam[0], rtol=0.05, atol=0)
    # with it, every timestep contributes the same expected gradient magnitude
    assert float(rect.max() / rect.min()) < 1.05


def _dist_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # unequal local batches: rank 0 holds [1, 2], rank 1 holds [3, 4, 5, 6] -> mean 3.5
        local = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([3.0, 4.0, 5.0, 6.0])
        m = global_mean(local)
        w = rectification_weights(local, m)
        if rank == 0:
            torch.save({"mean": m, "w": w}, out_file)
    finally:
        dist.destroy_process_group()


def test_global_mean_across_two_ranks(tmp_path):
    init_file, out_file = str(tmp_path / "init"), str(tmp_path / "out.pt")
    mp.spawn(_dist_worker, args=(2, init_file, out_file), nprocs=2, join=True)
    res = torch.load(out_file)
    assert float(res["mean"]) == pytest.approx(3.5)
    torch.testing.assert_close(res["w"], torch.tensor([1.0, 2.0]) / 3.5)
    assert os.path.exists(out_file)
