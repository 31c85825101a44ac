"""The two shapes data takes on its way to the engine.

Readers produce `Interactions` (one row per event, original ids); `build_sequences` turns them
into `SequenceData` (dense ids, one time-ordered sequence per user, stored as CSR arrays so that
nothing downstream holds one Python object per user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Raw interaction log with original ids.

    `users` and `items` are 1-D arrays of equal length (integer or string ids). `times` is an
    integer array of the same length, or None when the file order is the time order. `source`
    names where the rows came from, for error messages and logs.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or (self.times is not None and len(self.times) != n):
            raise ValueError(
                f"{self.source}: users, items and times must have equal lengths, got "
                f"{n}, {len(self.items)}, {None if self.times is None else len(self.times)}"
            )

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class SequenceData:
    """Per-user item sequences with dense ids.

    - `user_ids[u]`: original id of dense user u (0..num_users-1).
    - `item_ids[i]`: original id of dense item i (1..num_items); index 0 is padding and holds a
      placeholder (0 for integer ids, "" for string ids).
    - `offsets` (int64, num_users+1) and `items` (int64, dense ids >= 1): user u's sequence, oldest
      first, is `items[offsets[u]:offsets[u+1]]`.
    - `item_first_seen[i]`: the earliest timestamp of dense item i (index 0: padding), or None when
      the data has no timestamps (what splits new items by time, data/cold.py, reads).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    source: str
    item_first_seen: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of real items; dense ids run 1..num_items."""
        return len(self.item_ids) - 1

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]
