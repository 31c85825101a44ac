"""New items: a share of the catalogue that no client trains on, to measure how a model
recommends items that arrive after training (`--cold-items FRACTION`).

The cold items are drawn by the run's seed (`by="random"`) or are the items first interacted with
last (`by="time"`: every item whose first interaction falls after a cut-off, chosen so that the
given share of the items falls after it). They are removed from every user's sequence except as its
very last item, so they appear only as test targets: never as a training input or target, never in
a validation input or as a validation target. They stay in the catalogue: as training negatives,
as evaluation candidates, and ranked under full ranking. Users are then grouped by their test item:
warm-target users (a trained item) and cold-target users (a new one).
"""

from __future__ import annotations

import logging

import numpy as np

from feddmmr import streams
from feddmmr.data.types import SequenceData
from feddmmr.errors import InputError

log = logging.getLogger(__name__)

COLD_BY = ("random", "time")
MIN_ITEMS = 3  # leave-one-out: a training item, the validation item and the test item


def choose_cold_items(data: SequenceData, fraction: float, by: str, seed: int) -> np.ndarray:
    """[num_items + 1] bool, True for the cold items (index 0, padding, is never cold)."""
    if by not in COLD_BY:
        raise ValueError(f"cold items by {by!r}; expected one of {COLD_BY}")
    count = int(round(fraction * data.num_items))
    if not 0 < count < data.num_items:
        raise InputError(
            f"--cold-items {fraction}: {count} of the data's {data.num_items} items would be new; give a "
            f"share that leaves at least one new and one trained item"
        )
    cold = np.zeros(data.num_items + 1, dtype=bool)
    if by == "random":
        rng = np.random.default_rng([seed, streams.COLD_ITEMS])
        cold[1 + rng.choice(data.num_items, size=count, replace=False)] = True
        return cold
    if data.item_first_seen is None:
        raise InputError(
            f"--cold-items-by time: {data.source} has no timestamps (a sequences or user-item file is "
            f"in time order per user only); use data with a time column (ML-1M's ratings.dat, ML-100K's "
            f"u.data, CSV or Parquet with a time column) or --cold-items-by random"
        )
    # The `count` items first seen last; among items first seen at the same second, the higher dense id.
    order = np.lexsort((np.arange(data.num_items), data.item_first_seen[1:]))
    cold[1 + order[-count:]] = True
    log.info(
        "new items by time: the %d items first interacted with after timestamp %d",
        count,
        int(data.item_first_seen[1 + order[-count - 1]]),
    )
    return cold


def hold_out_cold_items(data: SequenceData, cold: np.ndarray) -> SequenceData:
    """`data` with the `cold` items removed from every sequence except as its last item; users
    left with fewer than 3 items are dropped (logged). Item ids and the catalogue are unchanged."""
    keep = ~cold[data.items]
    keep[data.offsets[1:] - 1] = True  # each user's last item, cold or not
    lengths = np.add.reduceat(keep.astype(np.int64), data.offsets[:-1])
    users = lengths >= MIN_ITEMS
    keep &= np.repeat(users, data.lengths)
    if not users.all():
        log.info(
            "new items: dropped %d users left with fewer than %d items without them",
            int((~users).sum()),
            MIN_ITEMS,
        )
    if not users.any():
        raise InputError(
            f"{data.source}: with the new items removed, no user keeps {MIN_ITEMS} items; "
            f"use a smaller --cold-items"
        )
    kept_lengths = lengths[users]
    return SequenceData(
        user_ids=data.user_ids[users],
        item_ids=data.item_ids,
        offsets=np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64),
        items=data.items[keep],
        source=data.source,
        item_first_seen=data.item_first_seen,
    )


def describe(data: SequenceData, cold: np.ndarray, test_items: np.ndarray) -> str:
    """One line for the run's log: how many items are new and how many users' test items are."""
    cold_targets = int(cold[test_items].sum())
    return (
        f"new items: {int(cold.sum())} of {data.num_items} held out of training; {cold_targets} of "
        f"{len(test_items)} users' test items are new"
    )
