"""A deterministic, MovieLens-shaped synthetic interaction log with planted sequential structure.

Used by tests, examples and smoke runs: no download, and a sequence model has something to learn.

How a user's sequence is drawn:
- every item belongs to one of `num_clusters` latent clusters and has `successors_per_item`
  "successor" items, mostly from its own cluster, chosen by popularity;
- each user has a favourite cluster;
- step t follows a successor of one of the last few items with probability `follow_probability`
  (the most recent item most often); otherwise it is a popularity draw, restricted to the user's
  favourite cluster with probability `taste_probability`;
- a user never repeats an item (as in MovieLens): seen items are excluded from every draw.

Item popularity is Zipf-like and sequence lengths are log-normal (long-tailed), clipped to
[`min_length`, `max_length`].
"""

from __future__ import annotations

import numpy as np

from feddmmr.data.types import Interactions

# How far back a successor step may look, and how strongly it prefers the most recent item.
RECENT_WINDOW_WEIGHTS = (0.7, 0.2, 0.1)
# Share of an item's successors taken from its own cluster.
SAME_CLUSTER_SUCCESSOR_SHARE = 0.8


def make_synthetic(
    seed: int = 0,
    num_users: int = 500,
    num_items: int = 1000,
    *,
    num_clusters: int = 20,
    successors_per_item: int = 3,
    follow_probability: float = 0.6,
    taste_probability: float = 0.5,
    popularity_exponent: float = 1.0,
    median_length: int = 60,
    length_sigma: float = 0.6,
    min_length: int = 20,
    max_length: int = 400,
) -> Interactions:
    """Draw a synthetic log; users are 1..num_users, items 1..num_items, times = positions."""
    if not 0 < min_length <= median_length <= max_length:
        raise ValueError(
            f"need 0 < min_length <= median_length <= max_length, got "
            f"{min_length}, {median_length}, {max_length}"
        )
    if max_length > num_items // 2:
        raise ValueError(
            f"max_length={max_length} must be at most num_items // 2 = {num_items // 2}: users "
            f"never repeat an item, and the successor structure needs unseen items left"
        )
    if successors_per_item >= num_items:
        raise ValueError(f"successors_per_item={successors_per_item} must be < num_items")
    settings = dict(
        seed=seed,
        num_users=num_users,
        num_items=num_items,
        num_clusters=num_clusters,
        successors_per_item=successors_per_item,
        follow_probability=follow_probability,
        taste_probability=taste_probability,
        popularity_exponent=popularity_exponent,
        median_length=median_length,
        length_sigma=length_sigma,
        min_length=min_length,
        max_length=max_length,
    )
    rng = np.random.default_rng(seed)
    popularity = _zipf_popularity(num_items, popularity_exponent, rng)
    clusters = rng.integers(num_clusters, size=num_items)
    successors = _draw_successors(popularity, clusters, successors_per_item, rng)
    lengths = _draw_lengths(num_users, median_length, length_sigma, min_length, max_length, rng)
    favourite_clusters = rng.integers(num_clusters, size=num_users)

    sequences = [
        _draw_sequence(
            int(length),
            popularity * (clusters == favourite),
            popularity,
            successors,
            follow_probability,
            taste_probability,
            rng,
        )
        for length, favourite in zip(lengths, favourite_clusters)
    ]
    users = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), lengths)
    items = np.concatenate(sequences) + 1  # ids 1..num_items, like MovieLens
    times = np.concatenate([np.arange(length, dtype=np.int64) for length in lengths])
    source = "synthetic(" + ",".join(f"{key}={value}" for key, value in settings.items()) + ")"
    return Interactions(users=users, items=items.astype(np.int64), times=times, source=source)


def _zipf_popularity(num_items: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Item weights ~ 1 / rank**exponent, with ranks shuffled so that id says nothing."""
    ranks = rng.permutation(num_items) + 1
    weights = 1.0 / ranks.astype(np.float64) ** exponent
    return weights / weights.sum()


def _draw_successors(
    popularity: np.ndarray, clusters: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """[num_items, count] successor ids, mostly from the item's own cluster, by popularity."""
    num_items = len(popularity)
    successors = np.empty((num_items, count), dtype=np.int64)
    for item in range(num_items):
        same_cluster = (clusters == clusters[item]) & (np.arange(num_items) != item)
        from_cluster = rng.random(count) < SAME_CLUSTER_SUCCESSOR_SHARE
        # A tiny cluster may not have enough members: take the rest from all items.
        take_from_cluster = min(int(from_cluster.sum()), int(same_cluster.sum()))
        chosen = _weighted_without_replacement(popularity * same_cluster, take_from_cluster, rng)
        others = popularity.copy()
        others[item] = 0.0
        others[chosen] = 0.0
        rest = _weighted_without_replacement(others, count - take_from_cluster, rng)
        successors[item] = np.concatenate([chosen, rest])
    return successors


def _weighted_without_replacement(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return np.empty(0, dtype=np.int64)
    return rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())


def _draw_lengths(
    num_users: int,
    median: int,
    sigma: float,
    minimum: int,
    maximum: int,
    rng: np.random.Generator,
) -> np.ndarray:
    lengths = np.rint(median * np.exp(sigma * rng.standard_normal(num_users)))
    return np.clip(lengths, minimum, maximum).astype(np.int64)


def _draw_sequence(
    length: int,
    taste: np.ndarray,
    popularity: np.ndarray,
    successors: np.ndarray,
    follow_probability: float,
    taste_probability: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One user's items (0-based ids), never repeating one."""
    unseen = np.ones(len(popularity), dtype=bool)
    sequence = np.empty(length, dtype=np.int64)
    for step in range(length):
        item = -1
        if step > 0 and rng.random() < follow_probability:
            item = _unseen_successor(sequence[:step], successors, unseen, rng)
        if item < 0:
            use_taste = rng.random() < taste_probability and (taste * unseen).any()
            item = _draw_unseen(taste if use_taste else popularity, unseen, rng)
        sequence[step] = item
        unseen[item] = False
    return sequence


def _unseen_successor(
    history: np.ndarray, successors: np.ndarray, unseen: np.ndarray, rng: np.random.Generator
) -> int:
    """A random unseen successor of a recent item (most recent most likely); -1 if none left."""
    anchor = history[-1 - _recent_offset(min(len(history), len(RECENT_WINDOW_WEIGHTS)), rng)]
    candidates = [int(item) for item in successors[anchor] if unseen[item]]
    if not candidates:
        return -1
    return candidates[int(rng.integers(len(candidates)))]


def _recent_offset(window: int, rng: np.random.Generator) -> int:
    """How many steps back to look, drawn from RECENT_WINDOW_WEIGHTS[:window].

    Plain Python on purpose: rng.choice(p=...) costs ~20 us, called once per step.
    """
    weights = RECENT_WINDOW_WEIGHTS[:window]
    remaining = rng.random() * sum(weights)
    for offset, weight in enumerate(weights[:-1]):
        remaining -= weight
        if remaining < 0:
            return offset
    return window - 1


def _draw_unseen(weights: np.ndarray, unseen: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(weights * unseen)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
