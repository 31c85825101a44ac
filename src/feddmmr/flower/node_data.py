"""The users a SuperNode holds, and their training sequences in the server's item ids.

A node finds its data from its node config:
- `data-dir` (a deployment: `flower-supernode --node-config "data-dir=/data/node-0/interactions.csv"`):
  its own file or MovieLens folder, in any format `feddmmr` reads (optional `format`);
- `partition-id` / `num-partitions` (Flower's simulation sets these): its share of the dataset
  named in the run's config, every `num-partitions`-th user (`partition_users`).

Users and items are matched by their original ids, compared as strings, so a node's own file
needs no knowledge of the server's dense numbering. The server sends its item catalog with every
train message; the node's sequences are mapped into it, then split leave-one-out as on the
server (the last two items are the server's validation and test items, never trained on).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from feddmmr.config import TrainConfig
from feddmmr.data.load import load_sequences
from feddmmr.data.split import LeaveOneOut, last_items, leave_one_out
from feddmmr.data.types import SequenceData
from feddmmr.evaluation import EvalSet

DATA_DIR = "data-dir"
FORMAT = "format"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


def partition_users(num_users: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """Dense user indices of one partition: every num_partitions-th user, so sizes differ by <= 1."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id must be in [0, {num_partitions}), got {partition_id}")
    return np.arange(partition_id, num_users, num_partitions)


def select_users(data: SequenceData, users: np.ndarray) -> SequenceData:
    """The sequences of `users` (dense indices), with the same item numbering."""
    lengths = data.lengths[users]
    items = [data.sequence(int(u)) for u in users]
    return SequenceData(
        user_ids=data.user_ids[users],
        item_ids=data.item_ids,
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.concatenate(items) if items else np.zeros(0, dtype=np.int64),
        source=data.source,
    )


@dataclass(frozen=True)
class NodeData:
    split: LeaveOneOut  # the node's users, split leave-one-out in the node's own item numbering

    def user_ids(self) -> list[str]:
        return [str(u) for u in self.split.data.user_ids.tolist()]

    def training_sequences(self, user_ids: Sequence[str], catalog: Sequence[str]) -> list[np.ndarray]:
        """Each user's training items as indices into `catalog` (the server's item ids; index 0 is
        padding, so item catalog[i - 1] is dense id i)."""
        to_catalog = self._translator(catalog)
        return [to_catalog(uid, self.split.train_sequence(row)) for uid, row in self._rows(user_ids)]

    def held_out_set(
        self,
        user_ids: Sequence[str],
        catalog: Sequence[str],
        which: str,
        max_len: int,
        candidates: np.ndarray,
    ) -> EvalSet:
        """What evaluating `user_ids` (in this order) ranks, in `catalog`'s dense ids: the validation
        item after the training items (`which="valid"`), or the test item after the training items
        and the validation item ("test"). `candidates` [users, 1+N]: the server's, held-out item first,
        which must be this node's held-out item."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        to_catalog = self._translator(catalog)
        histories, targets = [], []
        for uid, row in self._rows(user_ids):
            held_out = to_catalog(uid, np.array([self.split.valid_items[row], self.split.test_items[row]]))
            train = to_catalog(uid, self.split.train_sequence(row))
            histories.append(train if which == "valid" else np.append(train, held_out[0]))
            targets.append(held_out[0] if which == "valid" else held_out[1])
        offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])]).astype(np.int64)
        items = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        targets = np.array(targets, dtype=np.int64)
        if not np.array_equal(candidates[:, 0], targets):
            wrong = [uid for uid, c, t in zip(user_ids, candidates[:, 0], targets) if c != t]
            raise ValueError(
                f"users {wrong[:5]}: the server's held-out items differ from this node's "
                f"({len(wrong)} in all); the node's data does not match the server's"
            )
        return EvalSet(
            inputs=torch.from_numpy(last_items(offsets, items, max_len)),
            candidates=torch.from_numpy(candidates),
            targets=torch.from_numpy(targets),
            seen_offsets=offsets,
            seen_items=items,
        )

    def _rows(self, user_ids: Sequence[str]) -> list[tuple[str, int]]:
        rows = {uid: row for row, uid in enumerate(self.user_ids())}
        missing = [uid for uid in user_ids if uid not in rows]
        if missing:
            raise KeyError(f"this node holds no user {missing[0]!r} (it holds {len(rows)} users)")
        return [(uid, rows[uid]) for uid in user_ids]

    def _translator(self, catalog: Sequence[str]):
        """to_catalog(user id, items in this node's numbering) -> the same items as catalog indices."""
        dense = {item: i + 1 for i, item in enumerate(catalog)}
        own_items = [str(i) for i in self.split.data.item_ids.tolist()]

        def to_catalog(uid: str, items: np.ndarray) -> np.ndarray:
            original = [own_items[i] for i in items.tolist()]
            unknown = [item for item in original if item not in dense]
            if unknown:
                raise ValueError(
                    f"user {uid}: items {unknown[:5]} are not in the server's item catalog "
                    f"({len(unknown)} in all); the node's data does not match the server's"
                )
            return np.array([dense[item] for item in original], dtype=np.int64)

        return to_catalog


def load_node_data(node_config: Mapping[str, object], config: TrainConfig) -> NodeData:
    has_dir, has_partition = DATA_DIR in node_config, PARTITION_ID in node_config
    if has_dir == has_partition:
        raise ValueError(
            f"node config {dict(node_config)}: expected either {DATA_DIR}=<this node's data file or folder> "
            f"(a deployment) or {PARTITION_ID}/{NUM_PARTITIONS} (a simulation), not "
            f"{'both' if has_dir else 'neither'}"
        )
    if has_dir:
        data_format = node_config.get(FORMAT)
        return _own_data(
            str(node_config[DATA_DIR]), None if data_format is None else str(data_format), config.min_length
        )
    if NUM_PARTITIONS not in node_config:
        raise ValueError(f"node config {dict(node_config)}: {PARTITION_ID} needs {NUM_PARTITIONS}")
    return _partition(
        config.data_dir,
        config.format,
        config.top_users,
        config.min_length,
        int(node_config[PARTITION_ID]),
        int(node_config[NUM_PARTITIONS]),
    )


# Cached per process: a Ray actor or an in-process simulation serves many messages (and several
# nodes), and reading a dataset costs more than a round of training on it.


@functools.lru_cache(maxsize=4)
def _own_data(path: str, data_format: str | None, min_length: int) -> NodeData:
    return NodeData(leave_one_out(load_sequences(path, format=data_format, min_length=min_length)))


@functools.lru_cache(maxsize=8)
def _partition(
    data_dir: str | None,
    data_format: str | None,
    top_users: int | None,
    min_length: int,
    partition_id: int,
    num_partitions: int,
) -> NodeData:
    data = _dataset(data_dir, data_format, top_users, min_length)
    return NodeData(
        leave_one_out(select_users(data, partition_users(data.num_users, partition_id, num_partitions)))
    )


@functools.lru_cache(maxsize=2)
def _dataset(
    data_dir: str | None, data_format: str | None, top_users: int | None, min_length: int
) -> SequenceData:
    return load_sequences(data_dir, format=data_format, top_users=top_users, min_length=min_length)


def node_seed(seed: int, user_ids: list[str], *keys: int) -> int:
    """A seed of the node's own for the stream named by `keys`: nodes hold different users, so
    their streams differ."""
    digest = hashlib.sha256("\n".join(sorted(user_ids)).encode()).digest()
    return int(
        np.random.SeedSequence([seed, *keys, int.from_bytes(digest[:8], "little")]).generate_state(1)[0]
    )
