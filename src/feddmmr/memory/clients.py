"""The memories of every client of a run, with the settings and item features they use.

The run keeps one `ClientMemories` (all users, on the CPU: it can be large and is checkpointed);
an engine takes the slice of the clients it trains (`select`, moved to its device), retrieves and
updates it after every local step, and writes it back (`scatter`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from feddmmr.memory.two_tier import (
    MemoryConfig,
    MemoryState,
    empty_memory,
    retrieve,
    scatter,
    select,
    update_memory,
)


@dataclass
class ClientMemories:
    state: MemoryState  # [num_users, ...], on the CPU
    config: MemoryConfig
    features: torch.Tensor  # the combined item feature [num_items+1, D] (row 0 zeros)

    @classmethod
    def empty(cls, num_users: int, config: MemoryConfig, features: torch.Tensor) -> ClientMemories:
        return cls(empty_memory(num_users, config, dim=features.shape[1]), config, features)

    def select(self, users: list[int] | np.ndarray, device: torch.device) -> MemoryState:
        part = select(self.state, torch.as_tensor(np.asarray(users, dtype=np.int64)))
        return MemoryState(**{name: t.to(device) for name, t in part.to_dict().items()})

    def scatter(self, users: list[int] | np.ndarray, part: MemoryState) -> None:
        scatter(self.state, torch.as_tensor(np.asarray(users, dtype=np.int64)), part)

    def retrieve(self, part: MemoryState) -> tuple[torch.Tensor, torch.Tensor]:
        """(items [C, K], mask [C, K]) of the clients of `part`."""
        return retrieve(part, self.config)

    def update(self, part: MemoryState, positives: torch.Tensor) -> MemoryState:
        """`part` after a local step whose positives [C, T] are in each user's time order (0 = none)."""
        return update_memory(part, positives, self.features.to(part.device), self.config)
