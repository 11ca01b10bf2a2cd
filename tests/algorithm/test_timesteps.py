import pytest
import torch

from fgrpo.algorithm import sample_step_indices


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_window():
    idx = sample_step_indices(24, 8, (0, 10), None, True, _gen(0))
    assert idx.shape == (192,)
    assert idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < 10
    wide = sample_step_indices(500, 2, [3, 7], None, False, _gen(0))
    assert set(wide.tolist()) == {3, 4, 5, 6}


def test_same_seed_same_indices_on_every_rank():
    for iso in (True, False):
        a = sample_step_indices(24, 8, (0, 10), None, iso, _gen(123))
        b = sample_step_indices(24, 8, (0, 10), None, iso, _gen(123))
        c = sample_step_indices(24, 8, (0, 10), None, iso, _gen(124))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_iso_temporal_groups_share_index():
    idx = sample_step_indices(32, 8, (0, 10), None, True, _gen(1)).reshape(32, 8)
    assert torch.all(idx == idx[:, :1])
    # different prompts cover several timesteps
    assert len(set(idx[:, 0].tolist())) > 3


def test_non_iso_groups_do_not_all_share():
    idx = sample_step_indices(32, 8, (0, 10), None, False, _gen(1)).reshape(32, 8)
    shared = (idx == idx[:, :1]).all(dim=1)
    assert not bool(shared.all())


def test_weights_respected():
    weights = [1.0, 0.0, 3.0, 0.0]
    idx = sample_step_indices(2000, 2, (5, 9), weights, False, _gen(2))
    assert set(idx.tolist()) == {5, 7}
    frac7 = float((idx == 7).double().mean())
    assert frac7 == pytest.approx(0.75, abs=0.03)  # normalised weights 1/4, 3/4


@pytest.mark.parametrize(
    "args",
    [
        (0, 8, (0, 10), None),
        (4, 0, (0, 10), None),
        (4, 8, (5, 5), None),
        (4, 8, (-1, 3), None),
        (4, 8, (0, 1, 2), None),
        (4, 8, (0, 3), [1.0, 1.0]),
        (4, 8, (0, 2), [1.0, -1.0]),
        (4, 8, (0, 2), [0.0, 0.0]),
    ],
)
def test_validation(args):
    with pytest.raises(ValueError):
        sample_step_indices(*args, iso_temporal=True, generator=_gen(0))
