"""Leave-one-out split: per user, last item = test, second-to-last = validation, rest = train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feddmmr.data.cold import hold_out_cold_items
from feddmmr.data.types import SequenceData


@dataclass(frozen=True)
class LeaveOneOut:
    """Training sequences (CSR over dense ids) and the two held-out items of every user; with new
    items (`cold`, [num_items + 1] bool, data/cold.py), `data` is the data without them except as
    test items."""

    data: SequenceData
    train_offsets: np.ndarray
    train_items: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray
    cold: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def num_items(self) -> int:
        return self.data.num_items

    def train_sequence(self, user: int) -> np.ndarray:
        return self.train_items[self.train_offsets[user] : self.train_offsets[user + 1]]

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.train_offsets)

    def train_counts(self) -> np.ndarray:
        """[num_items + 1] int64: each item's number of occurrences in the training sequences
        (0: an item training cannot learn an ID for); padding's is 0."""
        counts = np.bincount(self.train_items, minlength=self.num_items + 1)
        counts[0] = 0
        return counts

    def trained_items(self) -> np.ndarray:
        """[num_items + 1] bool: the items of some user's training sequence (what training can
        learn an ID for); padding is not one."""
        return self.train_counts() > 0

    def user_groups(self) -> dict[str, np.ndarray]:
        """With new items: the users whose test item is trained (`warm`) and new (`cold`), as
        [users] masks; {} without new items."""
        if self.cold is None:
            return {}
        cold_target = self.cold[self.test_items]
        return {"warm": ~cold_target, "cold": cold_target}

    @property
    def num_train_targets(self) -> np.ndarray:
        """Next-item targets per user: every training item but the first is predicted once."""
        return np.maximum(self.train_lengths - 1, 0)


def leave_one_out(data: SequenceData, cold: np.ndarray | None = None) -> LeaveOneOut:
    """The split of `data`; with `cold` items, after removing them from every sequence but as its
    last item (data/cold.py)."""
    if cold is not None:
        data = hold_out_cold_items(data, cold)
    lengths = data.lengths
    too_short = np.flatnonzero(lengths < 3)
    if too_short.size:
        raise ValueError(
            f"{data.source}: leave-one-out needs at least 3 items per user; "
            f"{too_short.size} users have fewer (e.g. user {data.user_ids[too_short[0]]} with "
            f"{lengths[too_short[0]]}). Build the sequences with min_length >= 3."
        )
    ends = data.offsets[1:]
    keep = np.ones(len(data.items), dtype=bool)
    keep[ends - 1] = False
    keep[ends - 2] = False
    return LeaveOneOut(
        data=data,
        train_offsets=np.concatenate([[0], np.cumsum(lengths - 2)]).astype(np.int64),
        train_items=data.items[keep],
        valid_items=data.items[ends - 2],
        test_items=data.items[ends - 1],
        cold=cold,
    )


def last_items(
    offsets: np.ndarray, items: np.ndarray, length: int, extra: np.ndarray | None = None
) -> np.ndarray:
    """The last `length` items of each CSR row (optionally followed by `extra[u]`), left-padded with 0."""
    num_rows = len(offsets) - 1
    out = np.zeros((num_rows, length), dtype=np.int64)
    room = length - (0 if extra is None else 1)
    for user in range(num_rows):
        row = items[max(offsets[user], offsets[user + 1] - room) : offsets[user + 1]]
        end = length - (0 if extra is None else 1)
        out[user, end - len(row) : end] = row
    if extra is not None:
        out[:, -1] = extra
    return out
