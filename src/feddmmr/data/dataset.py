"""Turn an interaction log into per-user, time-ordered sequences with dense ids."""

from __future__ import annotations

import logging

import numpy as np

from feddmmr.data.types import Interactions, SequenceData

logger = logging.getLogger(__name__)


def build_sequences(
    interactions: Interactions, *, min_length: int = 3, top_users: int | None = None
) -> SequenceData:
    """Group `interactions` into one time-ordered sequence per user.

    - Rows are sorted by (user, time) with a stable sort, so equal times (and every row when
      `times` is None) keep file order.
    - `top_users=N` keeps the N users with the most interactions (ties: lower original id first).
    - Users with fewer than `min_length` interactions are then dropped (logged at INFO).
    - Users are ordered by original id; items get dense ids 1..num_items in original-id order.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    if top_users is not None and top_users < 1:
        raise ValueError(f"top_users must be >= 1 or None, got {top_users}")
    source = interactions.source
    if len(interactions) == 0:
        raise ValueError(f"{source}: no interactions to build sequences from")
    interactions = _without_exact_repeats(interactions)

    order = _user_time_order(interactions)
    users = interactions.users[order]
    items = interactions.items[order]
    # Users are sorted, so each user's rows form one run: user_ids[k] owns counts[k] rows.
    user_ids, counts = np.unique(users, return_counts=True)

    keep = np.ones(len(user_ids), dtype=bool)
    if top_users is not None and top_users < len(user_ids):
        keep = _most_active(counts, top_users)
        logger.info(
            "%s: top_users=%d keeps %d of %d users (%d of %d interactions)",
            source,
            top_users,
            top_users,
            len(user_ids),
            counts[keep].sum(),
            counts.sum(),
        )
    too_short = keep & (counts < min_length)
    if too_short.any():
        logger.info(
            "%s: dropped %d users with fewer than min_length=%d interactions (%d interactions)",
            source,
            too_short.sum(),
            min_length,
            counts[too_short].sum(),
        )
    keep &= ~too_short
    if not keep.any():
        raise ValueError(
            f"{source}: no user has at least min_length={min_length} interactions "
            f"(the longest of {len(user_ids)} users has {counts.max()})"
        )

    row_kept = np.repeat(keep, counts)
    item_ids, dense_items = np.unique(items[row_kept], return_inverse=True)
    kept_counts = counts[keep]
    first_seen = None
    if interactions.times is not None:
        times = interactions.times[order][row_kept]
        first_seen = np.full(len(item_ids) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_seen, dense_items + 1, times.astype(np.int64))
    return SequenceData(
        user_ids=user_ids[keep],
        item_ids=np.concatenate([_padding_id(item_ids), item_ids]),
        offsets=np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64),
        items=dense_items.astype(np.int64) + 1,
        source=source,
        item_first_seen=first_seen,
    )


def _without_exact_repeats(interactions: Interactions) -> Interactions:
    """Drop rows that repeat an earlier row's user, item and timestamp (logged at INFO): one event
    recorded twice. Without timestamps a repeated (user, item) is a re-read, and stays."""
    if interactions.times is None:
        return interactions
    users, items, times = interactions.users, interactions.items, interactions.times
    order = np.lexsort((np.arange(len(users)), items, times, users))  # repeats adjacent, first one first
    u, i, t = users[order], items[order], times[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])
    if not repeat.any():
        return interactions
    keep = np.ones(len(order), dtype=bool)
    keep[order[repeat]] = False
    logger.info(
        "%s: dropped %d rows that repeat an earlier row's user, item and timestamp",
        interactions.source,
        int(repeat.sum()),
    )
    return Interactions(users=users[keep], items=items[keep], times=times[keep], source=interactions.source)


def _user_time_order(interactions: Interactions) -> np.ndarray:
    """Row order by (user, time); stable, so ties keep file order."""
    if interactions.times is None:
        return np.argsort(interactions.users, kind="stable")
    # np.lexsort is stable and sorts by the last key first.
    return np.lexsort((interactions.times, interactions.users))


def _most_active(counts: np.ndarray, n: int) -> np.ndarray:
    """Mask of the n users with the largest counts; `counts` is in id order, so a stable sort on
    descending counts breaks ties by the lower id."""
    chosen = np.argsort(-counts, kind="stable")[:n]
    mask = np.zeros(len(counts), dtype=bool)
    mask[chosen] = True
    return mask


def _padding_id(item_ids: np.ndarray) -> np.ndarray:
    """The placeholder stored at dense id 0: 0 for integer ids, "" otherwise."""
    if item_ids.dtype.kind in "iu":
        return np.zeros(1, dtype=item_ids.dtype)
    return np.array([""], dtype=item_ids.dtype if item_ids.dtype.kind == "U" else object)
