"""The two-tier local memory of FedDMMR, kept for all clients at once.

Every tensor of a `MemoryState` has a leading client dimension C, and `update_memory` processes
the positives of one local step for all clients together: the only Python loop runs over the
positives of the step, in time order, because each long-term write depends on the previous ones.

Layout (items are dense ids, 0 = empty slot):

- short-term (ST) `short_items` [C, S]: a FIFO in the user's time order, oldest first and
  right-aligned (like a left-padded sequence): the newest item is in column S-1, empty slots on
  the left.
- long-term (LT) `long_items` [C, Lt] with `long_embeddings` [C, Lt, D] (unit norm; zeros when
  the memory runs without features), `long_frequency` and `long_refreshed` (the step of the last
  write), both [C, Lt]. Slots are filled lowest index first; an evicted slot is reused in place.
- `step` [C]: positives processed so far. The positive processed at step value n has time n
  (0-based), so an entry written by the latest positive has age 1 at retrieval.
- counters [C], cumulative: `writes` (LT writes, merges included), `merges`, `evictions`,
  `positives` (positives seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

_BLOCK = 128  # positives processed per block: bounds the [C, block, S + block] cosine tensors


@dataclass(frozen=True)
class MemoryConfig:
    """Capacities and rules of the memory (defaults: the seed's values)."""

    short_capacity: int = 50
    long_capacity: int = 200
    novelty_threshold: float = 0.583
    merge_threshold: float = 0.74
    ema: float = 0.9
    age_scale: float = 200.0
    retrieve_short: int = 5
    retrieve_long: int = 15

    def __post_init__(self) -> None:
        for name in ("short_capacity", "long_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MemoryConfig.{name} must be a positive integer, got {value!r}")
        # novelty = 1 - cosine lies in [0, 2]; a threshold outside it would make the gate constant.
        _check_range("novelty_threshold", self.novelty_threshold, 0.0, 2.0)
        _check_range("merge_threshold", self.merge_threshold, -1.0, 1.0)
        _check_range("ema", self.ema, 0.0, 1.0)
        if not (math.isfinite(self.age_scale) and self.age_scale > 0):
            raise ValueError(f"MemoryConfig.age_scale must be positive and finite, got {self.age_scale}")
        for name, capacity in (
            ("retrieve_short", self.short_capacity),
            ("retrieve_long", self.long_capacity),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= capacity:
                raise ValueError(
                    f"MemoryConfig.{name} must be an integer in [0, {capacity}] "
                    f"(its tier's capacity), got {value!r}"
                )
        if self.retrieval_slots == 0:
            raise ValueError("MemoryConfig: retrieve_short + retrieve_long must be at least 1")

    @property
    def retrieval_slots(self) -> int:
        """K, the number of memory slots `retrieve` returns per client."""
        return self.retrieve_short + self.retrieve_long


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also rejects NaN
        raise ValueError(f"MemoryConfig.{name} must be in [{low}, {high}], got {value}")


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class MemoryState:
    """The memories of C clients; see the module docstring for the meaning of each field."""

    short_items: torch.Tensor  # [C, S] int64
    long_items: torch.Tensor  # [C, Lt] int64
    long_embeddings: torch.Tensor  # [C, Lt, D] float
    long_frequency: torch.Tensor  # [C, Lt] int64
    long_refreshed: torch.Tensor  # [C, Lt] int64
    step: torch.Tensor  # [C] int64
    # Statistics: equal to `step` for `positives` unless a caller resets them (e.g. per round);
    # `step` must never be reset since LT ages are measured with it.
    writes: torch.Tensor  # [C] int64
    merges: torch.Tensor  # [C] int64
    evictions: torch.Tensor  # [C] int64
    positives: torch.Tensor  # [C] int64

    def __post_init__(self) -> None:
        _check_state_shapes(self)

    @property
    def num_clients(self) -> int:
        return self.short_items.shape[0]

    @property
    def short_capacity(self) -> int:
        return self.short_items.shape[1]

    @property
    def long_capacity(self) -> int:
        return self.long_items.shape[1]

    @property
    def dim(self) -> int:
        return self.long_embeddings.shape[2]

    @property
    def device(self) -> torch.device:
        return self.short_items.device

    def clone(self) -> MemoryState:
        return MemoryState(**{name: tensor.clone() for name, tensor in self.to_dict().items()})

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors by field name (safe for `torch.save` / `torch.load(weights_only=True)`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> MemoryState:
        """Inverse of `to_dict`; raises ValueError on missing or unknown keys and bad shapes."""
        expected = {f.name for f in fields(cls)}
        missing, unknown = expected - tensors.keys(), tensors.keys() - expected
        if missing or unknown:
            raise ValueError(
                f"not a memory state: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
            )
        return cls(**tensors)


def _check_state_shapes(state: MemoryState) -> None:
    num_clients, long_capacity = state.long_items.shape[0], state.long_items.shape[1]
    expected = {
        "short_items": (num_clients, None),
        "long_items": (num_clients, long_capacity),
        "long_embeddings": (num_clients, long_capacity, None),
        "long_frequency": (num_clients, long_capacity),
        "long_refreshed": (num_clients, long_capacity),
        **{name: (num_clients,) for name in ("step", "writes", "merges", "evictions", "positives")},
    }
    for name, shape in expected.items():
        tensor = getattr(state, name)
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.dim() != len(shape)
            or any(want is not None and have != want for have, want in zip(tensor.shape, shape))
        ):
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"MemoryState.{name}: expected shape {shape} (None = any), got {got}")
        if name != "long_embeddings" and tensor.dtype != torch.int64:
            raise ValueError(f"MemoryState.{name} must be int64, got {tensor.dtype}")
    if not state.long_embeddings.is_floating_point():
        raise ValueError(
            f"MemoryState.long_embeddings must be floating point, got {state.long_embeddings.dtype}"
        )


def empty_memory(
    num_clients: int,
    config: MemoryConfig,
    dim: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MemoryState:
    """Empty memories for `num_clients` clients with LT embeddings of width `dim` (1 without features)."""
    if num_clients < 0 or dim < 1:
        raise ValueError(f"empty_memory needs num_clients >= 0 and dim >= 1, got {num_clients}, {dim}")
    long_shape = (num_clients, config.long_capacity)

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.int64, device=device)

    return MemoryState(
        short_items=zeros(num_clients, config.short_capacity),
        long_items=zeros(*long_shape),
        long_embeddings=torch.zeros((*long_shape, dim), dtype=dtype, device=device),
        long_frequency=zeros(*long_shape),
        long_refreshed=zeros(*long_shape),
        **{name: zeros(num_clients) for name in ("step", "writes", "merges", "evictions", "positives")},
    )


def select(state: MemoryState, clients: torch.Tensor) -> MemoryState:
    """The memories of `clients` (an index tensor), as an independent copy."""
    clients = clients.to(state.device)
    return MemoryState(**{name: tensor[clients] for name, tensor in state.to_dict().items()})


def scatter(state: MemoryState, clients: torch.Tensor, sub_state: MemoryState) -> None:
    """Write `sub_state` (e.g. an updated `select(state, clients)`) back into `state`, IN PLACE.

    In place because the full state can be large (LT embeddings of every client) and a chunked
    engine writes back many chunks per round.
    """
    if len(clients) != sub_state.num_clients:
        raise ValueError(f"scatter: {len(clients)} client indices for {sub_state.num_clients} memories")
    clients = clients.to(state.device)
    for name, tensor in state.to_dict().items():
        part = getattr(sub_state, name)
        if part.shape[1:] != tensor.shape[1:]:
            raise ValueError(
                f"scatter: {name} has shape {tuple(part.shape[1:])} per client, "
                f"the full state {tuple(tensor.shape[1:])}"
            )
        tensor[clients] = part.to(tensor.device, tensor.dtype)


def summary(state: MemoryState) -> dict[str, float]:
    """Diagnostics: mean tier sizes per client, LT write ratio, and total merges and evictions."""
    return summary_from_totals(summary_totals(state))


def summary_totals(state: MemoryState) -> dict[str, float]:
    """Sums over the clients of `state` from which `summary` derives; totals of several groups of
    clients (e.g. Flower nodes) add up to the totals of all of them."""
    return {
        "clients": float(state.num_clients),
        "short_term_slots": float((state.short_items != 0).sum().item()),
        "long_term_slots": float((state.long_items != 0).sum().item()),
        "writes": float(state.writes.sum().item()),
        "positives": float(state.positives.sum().item()),
        "merges": float(state.merges.sum().item()),
        "evictions": float(state.evictions.sum().item()),
    }


def summary_from_totals(totals: dict[str, float]) -> dict[str, float]:
    clients, positives = totals["clients"], totals["positives"]
    return {
        "short_term_size": totals["short_term_slots"] / clients if clients else 0.0,
        "long_term_size": totals["long_term_slots"] / clients if clients else 0.0,
        "write_ratio": totals["writes"] / positives if positives else 0.0,
        "merges": totals["merges"],
        "evictions": totals["evictions"],
    }


def utility(state: MemoryState, config: MemoryConfig) -> torch.Tensor:
    """U = log(1 + frequency) + 2^(-age / age_scale) of every LT slot [C, Lt] at the current step;
    empty slots get -inf so that they rank last."""
    value = _utility(state.long_frequency, state.long_refreshed, state.step, config.age_scale)
    return value.masked_fill(state.long_items == 0, -math.inf)


def _utility(
    frequency: torch.Tensor, refreshed: torch.Tensor, now: torch.Tensor, age_scale: float
) -> torch.Tensor:
    age = (now.unsqueeze(1) - refreshed).float()
    return torch.log1p(frequency.float()) + torch.exp2(-age / age_scale)


def retrieve(state: MemoryState, config: MemoryConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The K = retrieve_short + retrieve_long memory slots of every client: (items [C, K], mask [C, K]).

    Order: first the `retrieve_short` most recent ST items in time order (oldest of them first,
    newest in column retrieve_short-1; missing ones are empty slots on the left), then the
    `retrieve_long` LT items by descending utility at the current step (ties: lower slot index
    first), empty slots last. Empty slots hold item 0 and mask False.
    """
    short = state.short_items[:, state.short_capacity - config.retrieve_short :]
    # A stable sort makes the order of equal utilities deterministic (topk's is not).
    ranked = torch.sort(utility(state, config), dim=1, descending=True, stable=True).indices
    long = state.long_items.gather(1, ranked[:, : config.retrieve_long])
    items = torch.cat([short, long], dim=1)
    return items, items != 0


def update_memory(
    state: MemoryState, positives: torch.Tensor, features: torch.Tensor, config: MemoryConfig
) -> MemoryState:
    """The memories after the positives of one local step; `state` and the inputs are not modified.

    - `positives` [C, T]: item ids in each user's time order; 0 = no positive (skipped, no step).
    - `features` [num_items+1, D]: the combined item feature (row 0 zeros). The LT gate is novelty
      against ST and merging is by cosine; items with a zero feature row cannot be compared, so
      they are never written to LT (they still enter ST).
    """
    _check_update_inputs(state, positives, features, config)
    positives = _compact(positives.to(state.device, torch.int64))
    features = features.to(state.device, state.long_embeddings.dtype)
    new = state.clone()
    length = int((positives != 0).sum(1).max().item()) if positives.numel() else 0
    for start in range(0, length, _BLOCK):
        _update_block(new, positives[:, start : min(start + _BLOCK, length)], features, config)
    return new


def _update_block(
    state: MemoryState, positives: torch.Tensor, features: torch.Tensor, config: MemoryConfig
) -> None:
    """`update_memory` for one block of compacted positives, in place."""
    counts = (positives != 0).sum(1)
    history_items = torch.cat([state.short_items, positives], dim=1)  # [C, S+T]: the ST, then the positives
    # Only the rows used are normalised (so that every dot product below is a cosine whatever the
    # caller passed), not the whole catalogue at every step.
    history = features[history_items]
    norms = history.norm(dim=-1, keepdim=True)
    history = history / norms.clamp_min(1e-12)  # F.normalize, keeping the norms
    embeddings = history[:, state.short_capacity :]
    cosines = torch.bmm(embeddings, history.transpose(1, 2))  # [C, T, S+T]
    novelty = _novelty(history_items, cosines)
    pairwise = cosines[:, :, state.short_capacity :]
    has_feature = norms[:, state.short_capacity :, 0] > 0
    write = (positives != 0) & has_feature & (novelty >= config.novelty_threshold)
    _write_long_term(state, positives, embeddings, pairwise, write, config)
    state.short_items = _append_short_term(history_items, state.short_capacity, counts)
    state.step += counts
    state.positives += counts
    state.writes += write.sum(1)


def _check_update_inputs(
    state: MemoryState, positives: torch.Tensor, features: torch.Tensor, config: MemoryConfig
) -> None:
    if (state.short_capacity, state.long_capacity) != (config.short_capacity, config.long_capacity):
        raise ValueError(
            f"memory state capacities (ST {state.short_capacity}, LT {state.long_capacity}) "
            f"differ from the config's ({config.short_capacity}, {config.long_capacity})"
        )
    if positives.dim() != 2 or positives.shape[0] != state.num_clients or positives.is_floating_point():
        raise ValueError(
            f"positives must be an integer tensor [C={state.num_clients}, T], "
            f"got {positives.dtype} {tuple(positives.shape)}"
        )
    if positives.numel() and positives.min().item() < 0:
        raise ValueError("positives must be item ids >= 0 (0 = no positive)")
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != state.dim:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else features
        raise ValueError(f"features must be [num_items+1, D={state.dim}] (the memory's width), got {shape}")
    if positives.numel() and positives.max().item() >= features.shape[0]:
        raise ValueError(
            f"positive item id {positives.max().item()} has no feature row "
            f"(features has {features.shape[0]} rows, row 0 = padding)"
        )


def _compact(positives: torch.Tensor) -> torch.Tensor:
    """Move each client's positives to the left, keeping their time order.

    Clients are independent, so skipping a client's 0 entries is the same as processing its
    positives back to back; after this, column t is every client's t-th real positive.
    """
    order = torch.sort((positives == 0).to(torch.int8), dim=1, stable=True).indices
    return positives.gather(1, order)


def _novelty(history: torch.Tensor, cosines: torch.Tensor) -> torch.Tensor:
    """Novelty [C, T] of every positive against the ST as it is when that positive arrives, from
    `history` [C, S+T] (the ST, then the positives) and the positives' cosines with it `cosines`
    [C, T, S+T].

    ST does not depend on LT decisions, so the ST seen by positive t is known in advance: the S
    entries before it in history, i.e. history columns [t, t+S). All positives are scored at once.
    """
    capacity = history.shape[1] - cosines.shape[1]
    row = torch.arange(cosines.shape[1], device=cosines.device).unsqueeze(1)
    column = torch.arange(cosines.shape[2], device=cosines.device).unsqueeze(0)
    in_window = (column >= row) & (column < row + capacity)
    present = in_window.unsqueeze(0) & (history != 0).unsqueeze(1)
    best = cosines.masked_fill(~present, -math.inf).amax(-1)
    return torch.where(present.any(-1), 1 - best, torch.ones_like(best))


def _append_short_term(history: torch.Tensor, capacity: int, counts: torch.Tensor) -> torch.Tensor:
    """The ST after appending each client's `counts` compacted positives: the last S = `capacity`
    entries of `history` = [ST | its positives]."""
    window = counts.unsqueeze(1) + torch.arange(capacity, device=history.device)
    return history.gather(1, window)


def _write_long_term(
    state: MemoryState,
    positives: torch.Tensor,
    embeddings: torch.Tensor,
    pairwise: torch.Tensor,
    write: torch.Tensor,
    config: MemoryConfig,
) -> None:
    """Apply the LT writes of every positive, in time order, to `state` (in place).

    Only two narrow parts of the block can change LT, and the work is cut to them (writes are
    rare: about 1% of positives with text features): the positives that some client writes, and
    the slots that a write can reach. Slots fill lowest index first and are never emptied, so a
    client's writes land below (its last used slot + 1 + its writes), or anywhere once its LT is
    full.

    Each step computes every client's would-be write at once: whole-batch ops are cheaper than
    gathering the writing clients' rows first. This loop is a chain of small tensor ops per
    positive, so its cost is their count: clients that do not write at a step write into a
    scratch slot (an extra last column, dropped at the end) instead of masking every update, and
    the merge and eviction counts are summed once after the loop.
    """
    steps = write.any(0).nonzero().squeeze(1)
    if len(steps) == 0:
        return
    positives, write = positives[:, steps], write[:, steps]
    capacity = state.long_capacity
    used = state.long_items != 0
    extent = (used * torch.arange(1, capacity + 1, device=state.device)).amax(1)  # last used slot + 1
    width = min(capacity, int((extent + write.sum(1)).max()))
    items, frequency, refreshed = (
        _with_scratch_slot(t[:, :width])
        for t in (state.long_items, state.long_frequency, state.long_refreshed)
    )
    # Each slot's row is [its embedding (D) | its cosines with every written positive]: the cosines
    # are computed once against the LT as it is now, and each write then updates its slot's row
    # from the positive's own row [embedding | cosines] (see _write_embedding): a batched
    # matrix-vector product per positive would read all LT embeddings at every write. One row holds
    # both so that a write is one gather and one scatter. An empty slot's cosines are -inf so that
    # it never looks like a merge target.
    embeddings, dim = embeddings[:, steps], embeddings.shape[2]
    long_embeddings = state.long_embeddings[:, :width]
    cosines = torch.bmm(long_embeddings, embeddings.transpose(1, 2)).masked_fill(
        ~used[:, :width, None], -math.inf
    )
    slots = _with_scratch_slot(torch.cat([long_embeddings, cosines], dim=2))
    incoming = torch.cat([embeddings, pairwise[:, steps][:, :, steps]], dim=2)  # [C, steps, D + steps]
    now = state.step.unsqueeze(1) + steps  # [C, steps]
    # Only a client with more writes than empty slots can find its LT full: when there is none
    # (most blocks), the utilities of the eviction rule are not needed.
    can_evict = bool((write.sum(1) > capacity - used.sum(1)).any())
    merged, evicted = [], []
    for t in range(len(steps)):
        empty = items[:, :width] == 0
        best_similarity, best_slot = slots[:, :width, dim + t].max(1)
        merge = best_similarity >= config.merge_threshold
        # An added entry goes to the first empty slot, or, when LT is full, to the slot of lowest
        # utility (argmin returns the first, i.e. lowest-index, slot among ties).
        add_slot = empty.to(torch.int8).argmax(1)
        if can_evict:  # then width == capacity
            full = ~empty.any(1)
            utilities = _utility(frequency[:, :width], refreshed[:, :width], now[:, t], config.age_scale)
            add_slot = torch.where(full, utilities.argmin(1), add_slot)
            evicted.append(~merge & full)
        # [C, 1]: where each client writes; the scratch slot for those not writing.
        slot = torch.where(write[:, t], torch.where(merge, best_slot, add_slot), width).unsqueeze(1)
        _write_embedding(slots, incoming[:, t], dim, slot, merge, config.ema)
        items.scatter_(
            1, slot.masked_fill(merge.unsqueeze(1), width), positives[:, t : t + 1]
        )  # a merge keeps the item
        old_frequency = frequency.gather(1, slot)
        frequency.scatter_(1, slot, torch.where(merge.unsqueeze(1), old_frequency + 1, 1))
        refreshed.scatter_(1, slot, now[:, t : t + 1])
        merged.append(merge)

    for name, values in (
        ("long_items", items),
        ("long_frequency", frequency),
        ("long_refreshed", refreshed),
        ("long_embeddings", slots[..., :dim]),
    ):
        getattr(state, name)[:, :width] = values[:, :width]
    state.merges += (write & torch.stack(merged, 1)).sum(1)
    if evicted:
        state.evictions += (write & torch.stack(evicted, 1)).sum(1)


def _with_scratch_slot(values: torch.Tensor) -> torch.Tensor:
    """A copy of `values` [C, Lt, ...] with one more (zero) slot at index Lt."""
    return torch.cat([values, values.new_zeros((values.shape[0], 1, *values.shape[2:]))], dim=1)


def _write_embedding(
    slots: torch.Tensor, incoming: torch.Tensor, dim: int, slot: torch.Tensor, merge: torch.Tensor, ema: float
) -> None:
    """Write the positive's row `incoming` [C, D + T] (its embedding, then its cosines with all
    positives) into `slot` [C, 1] of `slots` [C, Lt+1, D + T]: as is, or EMA-merged where
    `merge`. The merged embedding is (ema*old + (1-ema)*new) / norm, so its cosine with positive u
    is (ema*cos(old, u) + (1-ema)*cos(new, u)) / norm: the same mix and division of the whole row."""
    index = slot.unsqueeze(2).expand(-1, -1, slots.shape[2])
    mixed = ema * slots.gather(1, index).squeeze(1) + (1 - ema) * incoming
    norm = mixed[:, :dim].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    slots.scatter_(1, index, torch.where(merge.unsqueeze(1), mixed / norm, incoming).unsqueeze(1))
