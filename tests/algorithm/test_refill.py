"""The pure choice behind rollout.refill_zero_variance: which groups are replaced, by which."""

import pytest
import torch

from fgrpo.algorithm import refill_batch_size, refill_pairs, video_sources, zero_variance_mask, zero_variance_share


def test_zero_variance_mask_marks_groups_whose_rewards_are_all_equal():
    r = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.3, 0.3, 0.3, 0.3 + 1e-7])
    assert zero_variance_mask(r, 2).tolist() == [True, False, True, False]
    assert zero_variance_share(r, 2) == 0.5  # the recorded share counts the same groups


def test_pairs_take_the_next_fresh_group_that_teaches_in_draw_order():
    batch = torch.tensor([1.0, 1.0, 0.2, 0.8, 0.0, 0.0, 0.5, 0.5])  # groups 0 and 2 and 3 are all-equal
    fresh = torch.tensor([1.0, 1.0, 0.1, 0.9, 0.4, 0.6, 0.3, 0.7])  # fresh 0 all-equal: skipped
    assert refill_pairs(batch, fresh, 2) == [(0, 1), (2, 2), (3, 3)]
    assert refill_pairs(batch, fresh, 2) == refill_pairs(batch.clone(), fresh.clone(), 2)  # a function of rewards


def test_fewer_pairs_when_the_fresh_groups_saturate_too():
    batch = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.2, 0.8])
    fresh = torch.tensor([0.0, 0.0, 0.3, 0.4])
    assert refill_pairs(batch, fresh, 2) == [(0, 1)]  # group 1 stays for the next round
    assert refill_pairs(torch.tensor([0.1, 0.2]), fresh, 2) == []  # nothing to replace


def test_video_sources_map_each_video_of_a_replaced_group_to_its_fresh_video():
    assert video_sources([(0, 1), (2, 0)], 3) == {0: 3, 1: 4, 2: 5, 6: 0, 7: 1, 8: 2}


@pytest.mark.parametrize(
    ("need", "group_size", "dp", "expected"),
    [(1, 8, 1, 1), (3, 8, 2, 3), (1, 2, 4, 2), (3, 2, 4, 4), (1, 3, 4, 4), (5, 6, 4, 6), (2, 4, 8, 2)],
)
def test_a_round_rolls_out_the_fewest_groups_that_split_evenly_over_the_ranks(need, group_size, dp, expected):
    m = refill_batch_size(need, group_size, dp)
    assert m == expected
    assert m >= need and (m * group_size) % dp == 0


def test_refill_batch_size_refuses_nothing_to_refill():
    with pytest.raises(ValueError, match="need"):
        refill_batch_size(0, 8, 1)
