"""Negative sampling: the fixed evaluation candidates of a run, and training negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feddmmr import streams
from feddmmr.atomic import atomic_write
from feddmmr.data.split import LeaveOneOut
from feddmmr.errors import InputError, read_guarded


def user_history(split: LeaveOneOut, user: int) -> np.ndarray:
    """Every item of the user's whole sequence (train, validation and test)."""
    return split.data.sequence(user)


def draw_eval_candidates(split: LeaveOneOut, num_negatives: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test candidates: [num_users, 1 + num_negatives] dense ids, held-out item first.

    Negatives are uniform without replacement over the dataset's items minus the user's whole
    history: random keys for every item, history keys pushed to +inf, the smallest keys kept
    (a uniformly random subset). Drawn once per run from `seed`.
    """
    num_items = split.num_items
    available = num_items - np.array([len(np.unique(user_history(split, u))) for u in range(split.num_users)])
    if available.min() < num_negatives:
        user = int(np.argmin(available))
        raise InputError(
            f"--num-negatives-eval {num_negatives}: user {split.data.user_ids[user]} has only {available[user]} "
            f"items outside their history; use at most {available[user]} (every run draws these candidates once, "
            f"for sampled evaluation now or later with `feddmmr evaluate --eval sampled`)"
        )
    rng = np.random.default_rng([seed, streams.EVAL_CANDIDATES])
    out = []
    for held_out in (split.valid_items, split.test_items):
        rows = np.empty((split.num_users, 1 + num_negatives), dtype=np.int64)
        rows[:, 0] = held_out
        for user in range(split.num_users):
            history = user_history(split, user)
            keys = rng.random(num_items + 1)
            keys[0] = np.inf
            keys[history] = np.inf
            chosen = np.argpartition(keys, num_negatives)[:num_negatives]
            rows[user, 1:] = np.sort(chosen)
        out.append(rows)
    return out[0], out[1]


def save_candidates(path: Path, split: LeaveOneOut, valid: np.ndarray, test: np.ndarray) -> None:
    """candidates.npz: `users` (original user ids), `valid`/`test` (original item ids, held-out first)."""
    item_ids = split.data.item_ids
    atomic_write(
        path,
        lambda handle: np.savez(
            handle, users=split.data.user_ids, valid=item_ids[valid], test=item_ids[test]
        ),
    )


def _read_candidates(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as saved:
        return saved["users"], saved["valid"], saved["test"]


def load_candidates(
    path: Path, split: LeaveOneOut, num_negatives: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read candidates.npz back into dense ids, checking it belongs to this dataset (and, given
    `num_negatives`, that it holds that many negatives per user)."""
    users, valid, test = read_guarded(
        path,
        "candidates file",
        _read_candidates,
        fix="the run's fixed evaluation candidates are lost: start a new run",
    )
    if len(users) != split.num_users or not np.array_equal(users, split.data.user_ids):
        raise InputError(
            f"{path}: its users do not match the dataset ({len(users)} vs {split.num_users} users): "
            f"the data changed since the run started, or the file belongs to another run"
        )
    if valid.shape != test.shape or valid.ndim != 2 or len(valid) != len(users):
        raise InputError(
            f"{path}: valid {valid.shape} and test {test.shape} should both be [users={len(users)}, "
            f"1 + negatives]"
        )
    if num_negatives is not None and valid.shape[1] != 1 + num_negatives:
        raise InputError(
            f"{path}: holds {valid.shape[1] - 1} negatives per user, but the run's config says "
            f"num_negatives_eval={num_negatives}: the file belongs to another run"
        )
    item_ids = split.data.item_ids[1:]
    order = np.argsort(item_ids, kind="stable")
    dense = []
    for name, rows in (("valid", valid), ("test", test)):
        pos = np.searchsorted(item_ids, rows, sorter=order)
        pos = np.minimum(pos, len(item_ids) - 1)
        found = item_ids[order[pos]] == rows
        if not found.all():
            raise ValueError(
                f"{path}: {name} holds item ids unknown to the dataset, e.g. {rows[~found][0]!r}"
            )
        dense.append(order[pos] + 1)
    return dense[0], dense[1]


def sample_negatives(
    history: np.ndarray, num_items: int, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Uniform negatives from items 1..num_items outside `history`, in one batched draw.

    Rejected draws are redrawn together until none is left; the draws are independent
    (with replacement across targets), as in SASRec.
    """
    banned = np.zeros(num_items + 1, dtype=bool)
    banned[0] = True
    banned[history] = True
    if banned.all():
        raise ValueError("cannot sample negatives: the user's history covers every item")
    out = rng.integers(1, num_items + 1, size=shape)
    bad = banned[out]
    while bad.any():
        out[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
        bad = banned[out]
    return out


def sample_distinct_negatives(
    history: np.ndarray, num_items: int, rows: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """[rows, size]: each row `size` distinct items drawn uniformly from 1..num_items outside
    `history` (a uniform proposal: a softmax over them needs no logQ correction)."""
    banned = np.zeros(num_items + 1, dtype=bool)
    banned[0] = True
    banned[history] = True
    allowed = np.flatnonzero(~banned)
    if len(allowed) < size:
        raise ValueError(
            f"--num-negatives {size} with --negatives shared: a user has read all but {len(allowed)} "
            f"of the {num_items} items; use at most {len(allowed)}"
        )
    # The `size` smallest of random keys: a uniform draw without replacement for every row at once.
    keys = rng.random((rows, len(allowed)))
    return allowed[np.argpartition(keys, size - 1, axis=1)[:, :size]]
