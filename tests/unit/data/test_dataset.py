"""build_sequences: ordering, filtering, dense ids, and the known MovieLens figures."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from feddmmr.data.dataset import build_sequences
from feddmmr.data.readers import load_interactions
from feddmmr.data.types import Interactions

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real MovieLens files not found at {SHARED_DATA} (only present in the dev workspace)",
)


def log(users, items, times=None) -> Interactions:
    return Interactions(
        users=np.array(users),
        items=np.array(items),
        times=None if times is None else np.array(times, dtype=np.int64),
        source="test-log",
    )


def as_lists(data) -> list[list]:
    """Each user's sequence in original item ids."""
    return [data.item_ids[data.sequence(user)].tolist() for user in range(data.num_users)]


def test_sorts_by_user_then_time_keeping_file_order_on_ties() -> None:
    data = build_sequences(
        log(
            users=[2, 1, 2, 1, 2, 1],
            items=[50, 10, 40, 30, 60, 20],
            times=[5, 9, 5, 1, 1, 9],
        ),
        min_length=1,
    )
    assert data.user_ids.tolist() == [1, 2]
    # user 1: t=1 -> 30, then the two t=9 rows in file order (10, 20)
    # user 2: t=1 -> 60, then the two t=5 rows in file order (50, 40)
    assert as_lists(data) == [[30, 10, 20], [60, 50, 40]]


def test_without_times_file_order_is_time_order() -> None:
    data = build_sequences(log(users=[3, 1, 3, 1], items=[7, 9, 5, 8]), min_length=1)
    assert data.user_ids.tolist() == [1, 3]
    assert as_lists(data) == [[9, 8], [7, 5]]


def test_dense_ids_follow_original_item_order() -> None:
    data = build_sequences(log(users=[1, 1, 2, 2], items=[300, 20, 20, 1000]), min_length=1)
    assert data.item_ids.tolist() == [0, 20, 300, 1000]
    assert data.items.tolist() == [2, 1, 1, 3]
    assert data.offsets.tolist() == [0, 2, 4]
    assert data.items.dtype == np.int64 and data.offsets.dtype == np.int64
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 3, 4)


def test_string_ids_get_an_empty_placeholder() -> None:
    data = build_sequences(log(users=["bob", "al", "bob"], items=["y", "x", "z"]), min_length=1)
    assert data.user_ids.tolist() == ["al", "bob"]
    assert data.item_ids.tolist() == ["", "x", "y", "z"]
    assert as_lists(data) == [["x"], ["y", "z"]]


def test_min_length_drops_short_users_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    interactions = log(users=[1, 1, 1, 2, 2, 3], items=[1, 2, 3, 4, 5, 6])
    with caplog.at_level(logging.INFO, logger="feddmmr.data.dataset"):
        data = build_sequences(interactions, min_length=3)
    assert data.user_ids.tolist() == [1]
    # Items 4..6 belonged only to dropped users, so they get no dense id.
    assert data.item_ids.tolist() == [0, 1, 2, 3]
    assert "dropped 2 users with fewer than min_length=3 interactions (3 interactions)" in caplog.text


def test_top_users_breaks_ties_by_lower_id(caplog: pytest.LogCaptureFixture) -> None:
    # counts: user 1 -> 2, user 5 -> 3, user 7 -> 3, user 9 -> 2
    interactions = log(users=[9, 7, 5, 1, 7, 5, 9, 1, 5, 7], items=list(range(10)))
    with caplog.at_level(logging.INFO, logger="feddmmr.data.dataset"):
        assert build_sequences(interactions, top_users=3, min_length=1).user_ids.tolist() == [1, 5, 7]
    assert "top_users=3 keeps 3 of 4 users (8 of 10 interactions)" in caplog.text
    assert build_sequences(interactions, top_users=2, min_length=1).user_ids.tolist() == [5, 7]
    assert build_sequences(interactions, top_users=10, min_length=1).num_users == 4


def test_top_users_ties_on_string_ids_are_lexicographic() -> None:
    interactions = log(users=["b", "a", "c", "c"], items=["1", "2", "3", "4"])
    assert build_sequences(interactions, top_users=2, min_length=1).user_ids.tolist() == ["a", "c"]


def test_top_users_is_applied_before_min_length() -> None:
    interactions = log(users=[1, 1, 1, 2, 2, 3], items=[1, 2, 3, 4, 5, 6])
    data = build_sequences(interactions, top_users=2, min_length=3)
    assert data.user_ids.tolist() == [1]


def test_nothing_left_is_an_error() -> None:
    with pytest.raises(
        ValueError,
        match=r"test-log: no user has at least min_length=5 interactions \(the longest of 2 users has 2\)",
    ):
        build_sequences(log(users=[1, 1, 2], items=[1, 2, 3]), min_length=5)
    with pytest.raises(ValueError, match="test-log: no interactions"):
        build_sequences(log(users=[], items=[]))


def test_invalid_arguments() -> None:
    interactions = log(users=[1], items=[1])
    with pytest.raises(ValueError, match="min_length must be >= 1"):
        build_sequences(interactions, min_length=0)
    with pytest.raises(ValueError, match="top_users must be >= 1"):
        build_sequences(interactions, top_users=0)


@pytest.fixture(scope="module")
def ml1m():
    return load_interactions(SHARED_DATA / "ml-1m" / "ml-1m_sequences.txt")


@needs_shared_data
def test_real_ml1m_full_and_top_1000(ml1m) -> None:
    full = build_sequences(ml1m)
    assert (full.num_users, full.num_items, full.num_interactions) == (6_040, 3_706, 1_000_209)
    assert (full.lengths.min(), full.lengths.max()) == (20, 2_314)
    top = build_sequences(ml1m, top_users=1_000)
    assert (top.num_users, top.num_items, top.num_interactions) == (1_000, 3_646, 515_329)
    assert (top.lengths.min(), top.lengths.max()) == (293, 2_314)


@needs_shared_data
def test_real_ml1m_sequences_keep_file_order(ml1m) -> None:
    data = build_sequences(ml1m)
    first_user = ml1m.users == data.user_ids[0]
    assert np.array_equal(data.item_ids[data.sequence(0)], ml1m.items[first_user])


@needs_shared_data
def test_real_ml1m_ratings_sorted_by_timestamp() -> None:
    ratings = load_interactions(SHARED_DATA / "ml-1m" / "ratings_users1-2999.dat.gz", "ml-1m")
    data = build_sequences(ratings)
    assert (data.num_users, data.num_items, data.num_interactions) == (2_999, 3_615, 487_650)
    # Per user, dense sequence order must follow timestamps.
    order = np.lexsort((ratings.times, ratings.users))
    assert np.array_equal(data.item_ids[data.items], ratings.items[order])


@needs_shared_data
def test_real_ml100k() -> None:
    data = build_sequences(load_interactions(SHARED_DATA / "ml-100k"))
    assert (data.num_users, data.num_items, data.num_interactions) == (943, 1_682, 100_000)
