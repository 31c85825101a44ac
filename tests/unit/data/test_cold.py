"""New items (`--cold-items`): which items are new, and that no training or validation input holds one."""

import numpy as np
import pytest
from helpers import make_sequences, random_sequences

from feddmmr.data.cold import choose_cold_items, hold_out_cold_items
from feddmmr.data.split import leave_one_out
from feddmmr.data.types import SequenceData
from feddmmr.errors import InputError
from feddmmr.evaluation import group_metrics, metrics_from_ranks


def test_random_new_items_are_the_share_asked_drawn_by_the_seed():
    data = random_sequences(30, 40, 5, 12)
    cold = choose_cold_items(data, 0.25, "random", seed=0)
    assert cold.shape == (41,) and not cold[0] and cold.sum() == 10
    assert np.array_equal(cold, choose_cold_items(data, 0.25, "random", seed=0))
    assert not np.array_equal(cold, choose_cold_items(data, 0.25, "random", seed=1))


def test_new_items_by_time_are_those_first_seen_last():
    data = make_sequences([[1, 2, 3, 4], [2, 3, 4, 5, 6]], num_items=6)
    first_seen = np.array([0, 50, 10, 60, 20, 40, 30])  # items 3 and 1 were first seen last
    timed = SequenceData(data.user_ids, data.item_ids, data.offsets, data.items, data.source, first_seen)
    assert np.flatnonzero(choose_cold_items(timed, 2 / 6, "time", seed=0)).tolist() == [1, 3]


def test_new_items_by_time_need_timestamps():
    with pytest.raises(InputError, match="no timestamps.*--cold-items-by random"):
        choose_cold_items(random_sequences(5, 20, 4, 6), 0.2, "time", seed=0)


def test_a_share_that_leaves_no_new_or_no_trained_item_is_refused():
    with pytest.raises(InputError, match="--cold-items 0.01: 0 of the data's 20 items"):
        choose_cold_items(random_sequences(5, 20, 4, 6), 0.01, "random", seed=0)


def test_new_items_stay_only_as_each_users_last_item():
    data = make_sequences([[1, 9, 2, 3, 9], [9, 4, 5, 6, 7], [1, 9, 9, 2]], num_items=9)
    cold = np.zeros(10, dtype=bool)
    cold[9] = True
    held = hold_out_cold_items(data, cold)
    assert [held.sequence(u).tolist() for u in range(held.num_users)] == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert held.user_ids.tolist() == data.user_ids[:2].tolist()  # the third keeps 2 items: dropped
    assert np.array_equal(held.item_ids, data.item_ids)  # the catalogue is unchanged


def test_the_split_keeps_new_items_out_of_every_training_and_validation_input():
    data = random_sequences(60, 50, 6, 20, seed=3)
    cold = choose_cold_items(data, 0.2, "random", seed=0)
    split = leave_one_out(data, cold)
    assert not cold[split.train_items].any()  # training inputs and targets
    assert not cold[split.valid_items].any()  # validation targets (their inputs are training items)
    assert cold[split.test_items].any() and (~cold[split.test_items]).any()
    assert not split.trained_items()[cold].any() and not split.trained_items()[0]
    groups = split.user_groups()
    assert np.array_equal(groups["cold"], cold[split.test_items]) and np.array_equal(
        groups["warm"], ~groups["cold"]
    )
    assert leave_one_out(data).user_groups() == {}


def test_group_metrics_add_up_to_the_total():
    ranks = np.array([0, 3, 15, 40, 2, 7, 100])
    cold = np.array([True, False, False, True, False, True, False])
    groups = group_metrics(ranks, {"warm": ~cold, "cold": cold})
    total = metrics_from_ranks(ranks)
    assert groups["cold"]["users"] == 3 and groups["warm"]["users"] == 4
    for metric, value in total.items():
        assert 3 * groups["cold"][metric] + 4 * groups["warm"][metric] == pytest.approx(7 * value)
    assert group_metrics(ranks, {"cold": np.zeros(7, dtype=bool)}) == {"cold": {"users": 0}}
