"""A client's local training data for one round, laid out as padded step tensors.

Every next-item target of the client's training sequence is trained once per epoch: the
sequence is cut into non-overlapping windows of `max_len` positions, counted back from the most
recent item (the oldest window is left-padded), and each window trains all its positions in one
pass. With `windows="last"` (SASRec+'s sampling) an epoch trains the newest window only. The layout is a pure function of (sequence, settings, rng), so every engine (vectorised,
sequential, Flower) trains on exactly the same batches and negatives.

Negatives come in one of three layouts (`BatchSettings.negatives`):
- per-target: N items drawn for every target (candidates [steps, rows, max_len, 1+N]);
- shared: N distinct items drawn once per local step, outside the user's history, and shared
  by all the step's targets (candidates [..., 1] hold the targets, `shared` [steps, N]);
- all: every item is a negative (ce-full); candidates [..., 1], no `shared`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feddmmr import streams
from feddmmr.data.negatives import sample_distinct_negatives, sample_negatives


@dataclass(frozen=True)
class BatchSettings:
    max_len: int
    batch_size: int
    epochs: int
    num_negatives: int
    num_items: int
    negatives: str = "per-target"  # per-target, shared or all (ce-full)
    windows: str = "all"  # all: every window an epoch; last: the newest only (--train-windows)

    @classmethod
    def of(cls, config, num_items: int, **overrides) -> "BatchSettings":
        """The settings a run's config (a TrainConfig or Flower's run config) gives."""
        negatives = "all" if config.loss == "ce-full" else config.negatives
        fields = dict(
            max_len=config.max_seq_len,
            batch_size=config.batch_size,
            epochs=config.local_epochs,
            num_negatives=config.num_negatives,
            num_items=num_items,
            negatives=negatives,
            windows=config.train_windows,
        )
        return cls(**{**fields, **overrides})

    def engine_negatives(self) -> dict:
        """What `make_engine`'s memory estimate needs: how many negatives each target is scored
        against, and whether they are shared by a step's targets (scored as a matrix product)."""
        return {
            "num_negatives": self.num_items if self.negatives == "all" else self.num_negatives,
            "shared_negatives": self.negatives != "per-target",
        }


@dataclass(frozen=True)
class ClientBatches:
    """inputs/targets [steps, rows, max_len]; candidates [steps, rows, max_len, 1+N] (target first),
    or [..., 1] (the targets) with shared negatives `shared` [steps, N] or ce-full.

    Padding is item 0 everywhere; a row or step that is all padding trains nothing.
    """

    user: int
    inputs: np.ndarray
    candidates: np.ndarray
    num_targets: int
    # [steps, rows]: which training window each row holds (window w is older than w+1); -1 = empty row
    windows: np.ndarray | None = None
    shared: np.ndarray | None = None  # [steps, N]: each step's shared negatives (negatives="shared")

    @property
    def num_steps(self) -> int:
        return self.inputs.shape[0]

    def time_ordered_targets(self) -> np.ndarray:
        """[steps, rows * max_len]: each step's targets in the user's time order (0 = padding),
        what the memory sees after the step."""
        if self.windows is None:
            raise ValueError(f"client {self.user}: batches built without window indices")
        order = np.argsort(self.windows, axis=1, kind="stable")
        targets = np.take_along_axis(self.candidates[..., 0], order[..., None], axis=1)
        return targets.reshape(self.num_steps, -1)


def training_windows(sequence: np.ndarray, max_len: int, which: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each [num_windows, max_len]: item t predicts item t+1; `which="last"`:
    the newest window alone, [1, max_len]."""
    if which == "last":
        sequence = sequence[-(max_len + 1) :]
    inputs, targets = sequence[:-1], sequence[1:]
    num_windows = -(-len(targets) // max_len)
    pad = num_windows * max_len - len(targets)
    shape = (num_windows, max_len)
    padded_inputs = np.concatenate([np.zeros(pad, dtype=np.int64), inputs]).reshape(shape)
    padded_targets = np.concatenate([np.zeros(pad, dtype=np.int64), targets]).reshape(shape)
    return padded_inputs, padded_targets


def client_rng(seed: int, round_number: int, user: int) -> np.random.Generator:
    """The client's own random stream for a round: independent of which engine runs it."""
    return np.random.default_rng([seed, streams.CLIENT_BATCHES, round_number, user])


def make_client_batches(
    user: int, sequence: np.ndarray, settings: BatchSettings, rng: np.random.Generator
) -> ClientBatches:
    inputs, targets = training_windows(sequence, settings.max_len, settings.windows)
    num_windows = len(inputs)
    rows = min(settings.batch_size, max(num_windows, 1))
    steps_per_epoch = -(-num_windows // rows)
    steps = settings.epochs * steps_per_epoch
    batch_inputs = np.zeros((steps, rows, settings.max_len), dtype=np.int64)
    batch_targets = np.zeros((steps, rows, settings.max_len), dtype=np.int64)
    batch_windows = np.full((steps, rows), -1, dtype=np.int64)
    for epoch in range(settings.epochs):
        order = rng.permutation(num_windows)
        for step in range(steps_per_epoch):
            chosen = order[step * rows : (step + 1) * rows]
            batch_inputs[epoch * steps_per_epoch + step, : len(chosen)] = inputs[chosen]
            batch_targets[epoch * steps_per_epoch + step, : len(chosen)] = targets[chosen]
            batch_windows[epoch * steps_per_epoch + step, : len(chosen)] = chosen
    shared = None
    if settings.negatives == "per-target":
        negatives = sample_negatives(
            sequence, settings.num_items, batch_targets.shape + (settings.num_negatives,), rng
        )
        candidates = np.concatenate([batch_targets[..., None], negatives], axis=-1)
        candidates[batch_targets == 0] = 0
    else:
        candidates = batch_targets[..., None]
        if settings.negatives == "shared":
            shared = sample_distinct_negatives(
                sequence, settings.num_items, steps, settings.num_negatives, rng
            )
    return ClientBatches(
        user=user,
        inputs=batch_inputs,
        candidates=candidates,
        num_targets=int(np.count_nonzero(targets)),
        windows=batch_windows,
        shared=shared,
    )


@dataclass(frozen=True)
class StackedBatches:
    """Several clients' batches padded to common [clients, steps, rows, length, ...] tensors, `length`
    the chunk's longest window (at most max_len: the padding every window shares is cut).

    With `item_rows`, item ids in `inputs`/`candidates` are local: client c's local id j stands
    for item `item_rows[c, j]` (local 0 = padding), so each client trains a compact copy of only
    the item-embedding rows its round touches.
    """

    users: list[int]
    inputs: torch.Tensor
    candidates: torch.Tensor
    active: torch.Tensor  # [clients, steps]: the step holds at least one target
    weights: torch.Tensor  # [clients]: training targets, the FedAvg weight
    item_rows: torch.Tensor | None = None  # [clients, rows]: global item id of each local id
    shared: torch.Tensor | None = (
        None  # [clients, steps, N]: shared negatives (0 on a client's missing steps)
    )


def touched_items(client: ClientBatches) -> tuple[np.ndarray, list[np.ndarray]]:
    """(sorted item ids the client's round reads, with 0 first; its inputs, candidates and shared
    negatives, when it has some, in local ids)."""
    # A presence table over item ids and its inverse, not np.unique + searchsorted: ~30x faster,
    # and a round builds this for every sampled client.
    arrays = [client.inputs, client.candidates] + ([] if client.shared is None else [client.shared])
    present = np.bincount(np.concatenate([a.ravel() for a in arrays]))
    present[0] = 1  # the padding row, first
    rows = np.flatnonzero(present)
    local = np.zeros(len(present), dtype=np.int64)
    local[rows] = np.arange(len(rows))
    return rows, [local[a] for a in arrays]


def stack_positives(clients: list[ClientBatches], device: torch.device) -> torch.Tensor:
    """[clients, steps, positives]: each client's `time_ordered_targets`, padded with 0."""
    ordered = [c.time_ordered_targets() for c in clients]
    out = np.zeros(
        (len(clients), max(o.shape[0] for o in ordered), max(o.shape[1] for o in ordered)), dtype=np.int64
    )
    for i, o in enumerate(ordered):
        out[i, : o.shape[0], : o.shape[1]] = o
    return torch.from_numpy(out).to(device)


def stack_batches(
    clients: list[ClientBatches], device: torch.device, *, compact_items: bool = False
) -> StackedBatches:
    steps = max(c.inputs.shape[0] for c in clients)
    rows = max(c.inputs.shape[1] for c in clients)
    length = clients[0].inputs.shape[2]
    width = clients[0].candidates.shape[3]
    inputs = np.zeros((len(clients), steps, rows, length), dtype=np.int64)
    candidates = np.zeros((len(clients), steps, rows, length, width), dtype=np.int64)
    has_shared = clients[0].shared is not None
    shared = (
        np.zeros((len(clients), steps, clients[0].shared.shape[1]), dtype=np.int64) if has_shared else None
    )
    item_rows = []
    for i, c in enumerate(clients):
        s, r = c.inputs.shape[:2]
        arrays = [c.inputs, c.candidates] + ([c.shared] if has_shared else [])
        if compact_items:
            touched, arrays = touched_items(c)
            item_rows.append(touched)
        inputs[i, :s, :r] = arrays[0]
        candidates[i, :s, :r] = arrays[1]
        if has_shared:
            shared[i, :s] = arrays[2]
    # Windows are left-padded: the positions that are padding in every window of the chunk change
    # no real position's output (padding is masked from attention and zeroed), so they are cut. On
    # sparse data, where most histories are far shorter than max_len, that is most of the work.
    real = (candidates[..., 0] > 0).reshape(-1, length).any(0)
    first = int(real.argmax()) if real.any() else length - 1
    inputs, candidates = inputs[..., first:], candidates[..., first:, :]
    active = (candidates[..., 0] > 0).reshape(len(clients), steps, -1).any(-1)
    rows_tensor = None
    if compact_items:
        # Pad with 0 (the padding row): never referenced, so it stays zero and writes back zero.
        padded = np.zeros((len(clients), max(len(r) for r in item_rows)), dtype=np.int64)
        for i, r in enumerate(item_rows):
            padded[i, : len(r)] = r
        rows_tensor = torch.from_numpy(padded).to(device)
    return StackedBatches(
        users=[c.user for c in clients],
        inputs=torch.from_numpy(inputs).to(device),
        candidates=torch.from_numpy(candidates).to(device),
        active=torch.from_numpy(active).to(device),
        weights=torch.tensor([float(c.num_targets) for c in clients], device=device),
        item_rows=rows_tensor,
        shared=None if shared is None else torch.from_numpy(shared).to(device),
    )
