from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from feddmmr.federated.precision import Precision

# aggregate(client_params [clients, ...] per name, weights [clients])
Aggregate = Callable[[dict[str, torch.Tensor], torch.Tensor], None]
Progress = Callable[[int], None]


@dataclass
class LocalTraining:
    """How each client trains locally (a fresh Adam per client per round)."""

    learning_rate: float
    weight_decay: float
    loss: str
    precision: Precision


@dataclass(frozen=True)
class ClientReport:
    user: int
    mean_loss: float  # mean over the client's trained steps of the per-step mean target loss
    steps: int
    skipped_steps: int  # non-finite loss or gradient: never trained on
