import pytest
import torch

from fgrpo.algorithm import group_advantages


def _rewards(p=6, g=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # different offsets per prompt so global and group std differ
    return (torch.randn(p, g, generator=gen) + torch.arange(p).unsqueeze(1) * 3.0).reshape(-1)


def test_shape_and_zero_mean_per_group():
    r = _rewards()
    for mode in ("global", "group"):
        a = group_advantages(r, 4, std_mode=mode, clip=None)
        assert a.shape == r.shape
        torch.testing.assert_close(a.reshape(6, 4).mean(dim=1), torch.zeros(6), atol=1e-5, rtol=0)


def test_global_std_formula():
    r = _rewards()
    a = group_advantages(r, 4, std_mode="global", clip=None)
    g = r.reshape(6, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (r.std(correction=0) + 1e-4)).reshape(-1)
    torch.testing.assert_close(a, expected)


def test_group_std_formula_and_differs_from_global():
    r = _rewards()
    a = group_advantages(r, 4, std_mode="group", clip=None)
    g = r.reshape(6, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, correction=0, keepdim=True) + 1e-4)).reshape(-1)
    torch.testing.assert_close(a, expected)
    assert not torch.allclose(a, group_advantages(r, 4, std_mode="global", clip=None))


def test_population_std():
    r = torch.tensor([0.0, 2.0])  # population std 1, unbiased std sqrt(2)
    a = group_advantages(r, 2, std_mode="group", clip=None, eps=0.0)
    torch.testing.assert_close(a, torch.tensor([-1.0, 1.0]))


def test_clipping():
    r = torch.tensor([0.0] * 99 + [100.0])  # one outlier -> huge advantage
    a = group_advantages(r, 100, clip=None)
    assert float(a.max()) > 5.0
    c = group_advantages(r, 100, clip=5.0)
    assert float(c.max()) == pytest.approx(5.0)
    assert float(c.min()) >= -5.0


def test_equal_rewards_give_zero():
    a = group_advantages(torch.ones(8), 4)
    assert torch.all(a == 0)


def test_validation():
    with pytest.raises(ValueError):
        group_advantages(torch.ones(10), 4)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(2, 4), 4)
    with pytest.raises(ValueError, match="std_mode"):
        group_advantages(torch.ones(8), 4, std_mode="batch")


def test_zero_variance_share_counts_groups_whose_rewards_are_all_equal():
    from fgrpo.algorithm import zero_variance_share

    r = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.2, 0.3, 0.7, 0.7, 0.7])  # 3 groups of 3: the 1st and 3rd are flat
    assert zero_variance_share(r, 3) == pytest.approx(2 / 3)
    assert zero_variance_share(torch.tensor([0.0, 1e-7]), 2) == 0.0  # any difference teaches something
    assert (group_advantages(r, 3)[:3] == 0).all()  # what "teaches nothing" means
