"""make_synthetic: determinism, MovieLens-like shape, and learnable sequential structure."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from feddmmr.data.dataset import build_sequences
from feddmmr.data.synthetic import make_synthetic
from feddmmr.data.types import SequenceData


@pytest.fixture(scope="module")
def default_log():
    return make_synthetic()


@pytest.fixture(scope="module")
def default_sequences(default_log) -> SequenceData:
    return build_sequences(default_log, min_length=1)


def test_same_seed_gives_identical_arrays(default_log) -> None:
    again = make_synthetic(seed=0)
    assert np.array_equal(default_log.users, again.users)
    assert np.array_equal(default_log.items, again.items)
    assert np.array_equal(default_log.times, again.times)
    assert default_log.source == again.source
    assert default_log.source.startswith("synthetic(seed=0,num_users=500,num_items=1000,")


def test_different_seed_gives_different_data(default_log) -> None:
    other = make_synthetic(seed=1)
    assert len(other) != len(default_log) or not np.array_equal(other.items, default_log.items)
    assert other.source.startswith("synthetic(seed=1,")


def test_shape_resembles_movielens(default_log, default_sequences: SequenceData) -> None:
    lengths = default_sequences.lengths
    assert default_sequences.num_users == 500
    assert 900 <= default_sequences.num_items <= 1000
    assert 30_000 <= default_sequences.num_interactions <= 45_000
    assert lengths.min() == 20
    assert 45 <= np.median(lengths) <= 75
    assert 150 <= lengths.max() <= 400
    assert default_log.users.dtype == np.int64 and default_log.items.dtype == np.int64
    assert default_log.items.min() >= 1 and default_log.items.max() <= 1000
    # Zipf-like popularity: the top 10% of items take a large share of all interactions.
    counts = np.sort(np.bincount(default_sequences.items))[::-1]
    assert counts[:100].sum() > 0.3 * counts.sum()


def test_times_are_positions(default_log) -> None:
    first_user = default_log.users == 1
    assert default_log.times[first_user].tolist() == list(range(int(first_user.sum())))


def test_no_user_repeats_an_item(default_sequences: SequenceData) -> None:
    for user in range(default_sequences.num_users):
        sequence = default_sequences.sequence(user)
        assert len(np.unique(sequence)) == len(sequence)


def hit_rates_at_10(data: SequenceData) -> tuple[float, float]:
    """Leave-one-out HR@10 of most-popular and of "most frequent successor of the previous item",
    both fitted on every transition before each user's last item; seen items are excluded."""
    popularity: Counter[int] = Counter()
    successors: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for user in range(data.num_users):
        train = data.sequence(user)[:-1].tolist()
        popularity.update(train)
        for previous, following in zip(train[:-1], train[1:]):
            successors[previous][following] += 1
    by_popularity = [item for item, _ in popularity.most_common()]
    popular_hits = successor_hits = 0
    for user in range(data.num_users):
        sequence = data.sequence(user).tolist()
        seen, target = set(sequence[:-1]), sequence[-1]
        popular_hits += target in [i for i in by_popularity if i not in seen][:10]
        ranked = [i for i, _ in successors[sequence[-2]].most_common() if i not in seen][:10]
        successor_hits += target in ranked
    return popular_hits / data.num_users, successor_hits / data.num_users


def test_a_sequential_predictor_clearly_beats_popularity(default_sequences: SequenceData) -> None:
    popular_hr, successor_hr = hit_rates_at_10(default_sequences)
    assert successor_hr >= 1.5 * popular_hr
    assert successor_hr >= 0.25


def test_rejects_lengths_that_cannot_avoid_repeats() -> None:
    with pytest.raises(ValueError, match=r"max_length=400 must be at most num_items // 2 = 50"):
        make_synthetic(num_items=100)
    with pytest.raises(ValueError, match="need 0 < min_length <= median_length <= max_length"):
        make_synthetic(min_length=80, median_length=60)


def test_small_custom_configuration() -> None:
    interactions = make_synthetic(seed=3, num_users=20, num_items=200, max_length=100)
    data = build_sequences(interactions, min_length=1)
    assert data.num_users == 20
    assert data.lengths.max() <= 100
    assert interactions.items.max() <= 200
