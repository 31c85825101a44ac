from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from feddmmr.federated.precision import Precision
from feddmmr.model.losses import AuxiliaryWeights

if TYPE_CHECKING:
    from feddmmr.memory.clients import ClientMemories

# aggregate(client_params [clients, ...] per name, weights [clients])
Aggregate = Callable[[dict[str, torch.Tensor], torch.Tensor], None]
Progress = Callable[[int], None]


@dataclass
class LocalTraining:
    """How each client trains locally (a fresh Adam per client per round).

    FedDMMR: `memory` holds every client's memory; the model reads the client's retrieved slots
    and the memory takes each local step's positives after the step, and the auxiliary losses
    are added with `auxiliary`'s weights. `frozen` names the parameters no client changes.
    """

    learning_rate: float
    weight_decay: float
    loss: str
    precision: Precision
    memory: ClientMemories | None = None
    auxiliary: AuxiliaryWeights = AuxiliaryWeights()
    frozen: frozenset[str] = frozenset()
    optimizer: str = "adam"  # the client's optimiser, fresh every round: adam or sgd


@dataclass(frozen=True)
class ClientReport:
    user: int
    mean_loss: float  # mean over the client's trained steps of the per-step mean target loss
    steps: int
    skipped_steps: int  # non-finite loss or gradient: never trained on
