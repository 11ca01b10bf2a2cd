import pytest
import torch

from fgrpo.algorithm import policy_loss, ppo_clip_loss

EPS = 0.2


def _grad(log_ratio: float, adv: float, weight: float | None = None) -> float:
    lp = torch.tensor([log_ratio], requires_grad=True)
    w = None if weight is None else torch.tensor([weight])
    out = ppo_clip_loss(lp, torch.zeros(1), torch.tensor([adv]), EPS, w)
    (g,) = torch.autograd.grad(out.loss, lp)
    return float(g)


def test_value_at_ratio_one():
    adv = torch.tensor([1.0, -2.0, 0.5])
    out = ppo_clip_loss(torch.zeros(3), torch.zeros(3), adv, EPS)
    torch.testing.assert_close(out.per_sample, -adv)
    torch.testing.assert_close(out.ratio, torch.ones(3))
    assert float(out.loss) == pytest.approx(float(-adv.mean()))
    assert float(out.clip_fraction) == 0.0


def test_gradient_zero_outside_clip_in_favoured_direction():
    up, down = 0.5, -0.5  # r = e^0.5 > 1.2, r = e^-0.5 < 0.8
    # A > 0: pushing r above 1+eps gains nothing more -> no gradient; below 1-eps still pushes up
    assert _grad(up, 1.0) == 0.0
    assert _grad(down, 1.0) < 0.0
    # A < 0: pushing r below 1-eps gains nothing more; above 1+eps it still pushes down
    assert _grad(down, -1.0) == 0.0
    assert _grad(up, -1.0) > 0.0
    # inside the range the gradient is -A * r
    assert _grad(0.05, 2.0) == pytest.approx(-2.0 * torch.exp(torch.tensor(0.05)).item(), rel=1e-6)


def test_weights_scale_loss_and_gradient():
    assert _grad(0.05, 1.0, weight=3.0) == pytest.approx(3.0 * _grad(0.05, 1.0), rel=1e-6)
    out = ppo_clip_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), EPS, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(out.per_sample, torch.tensor([-0.5, -1.5]))


def test_clip_fraction():
    lp = torch.tensor([0.0, 0.5, -0.5, 0.1])  # |r-1|: 0, .65, .39, .105
    out = ppo_clip_loss(lp, torch.zeros(4), torch.ones(4), EPS)
    assert float(out.clip_fraction) == pytest.approx(0.5)
    assert out.clip_fraction.dtype.is_floating_point


def test_old_log_prob_gets_no_gradient():
    lp = torch.zeros(2, requires_grad=True)
    old = torch.zeros(2, requires_grad=True)
    loss = ppo_clip_loss(lp, old, torch.ones(2), EPS).loss
    loss.backward()
    assert old.grad is None
    assert lp.grad is not None


def test_policy_loss_kl_term():
    lp, old, adv = torch.zeros(3), torch.zeros(3), torch.tensor([1.0, 0.0, -1.0])
    kl = torch.tensor([0.1, 0.2, 0.3])
    base = policy_loss(lp, old, adv, EPS)
    assert float(base.loss) == pytest.approx(float(base.ppo.loss))
    with_kl = policy_loss(lp, old, adv, EPS, kl=kl, beta=0.5)
    assert float(with_kl.loss) == pytest.approx(float(base.loss) + 0.5 * 0.2)
    assert float(with_kl.kl) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        policy_loss(lp, old, adv, EPS, beta=0.1)
