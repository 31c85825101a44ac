from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from feddmmr.federated.precision import LossScales, Precision
from feddmmr.model.losses import AuxiliaryWeights

if TYPE_CHECKING:
    from feddmmr.memory.clients import ClientMemories

# aggregate(client_params [clients, ...] per name, weights [clients]) -> kept [clients]: False for
# an update the aggregator dropped (not finite)
Aggregate = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class RoundContext:
    """What an engine is told of the round it trains, explicitly: the round number (the clients'
    batches and a Flower node's random streams depend on it) and the run's seed."""

    round: int
    seed: int


@dataclass
class LocalTraining:
    """How each client trains locally (a fresh optimiser per client per round: SGD or Adam).

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
    optimizer: str = "sgd"  # the client's optimiser, fresh every round: sgd (the default recipe) or adam
    # DP: each client's update is clipped to this L2 norm and weighs 1 (federated/privacy.py)
    clip_norm: float | None = None
    gbce_beta: float = 1.0  # loss=gbce: the positive's weight (model/losses.py, gbce_beta)
    update_noise: float = (
        0.0  # noise on each client's item-table change before it leaves (federated/privacy.py)
    )


@dataclass(frozen=True)
class ClientReport:
    user: int
    mean_loss: float  # mean over the client's trained steps of the per-step mean target loss
    steps: int
    skipped_steps: int  # non-finite loss or gradient: never trained on
    dropped: bool = False  # its update was not finite: left out of the aggregate


@dataclass(frozen=True)
class RoundResult:
    """What an engine's round gives back: one report per client, and under fp16 the clients' loss
    scales at the end of the round (the run keeps the most cautious: `Precision.settle`)."""

    reports: list[ClientReport]
    loss_scales: tuple[LossScales, ...] = ()
    # Why a round has no update by design (SecAgg+ cannot mask a round whose users all live on one
    # node): the model stays as it was. A round without reports and without this lost its clients.
    skipped: str | None = None


class Engine(Protocol):
    """Runs one round's local training: each client of `clients` trains from `global_params` as
    `local` says, and its updated parameters go to `aggregate` (alone or in chunks). Returns one
    report per client. An engine changes nothing but the aggregator and, for FedDMMR, the client
    memories in `local.memory`: the run's own state (such as its loss scale) changes from the
    `RoundResult`."""

    def train(
        self,
        context: RoundContext,
        global_params: dict[str, torch.Tensor],
        clients: list,
        local: LocalTraining,
        aggregate: Aggregate,
        progress: Progress | None = None,
    ) -> RoundResult: ...


def guarded_step(
    objective: torch.Tensor, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, scales: LossScales
) -> bool:
    """Backward and optimiser step of one module, never on a non-finite loss or gradient.

    Under fp16 the loss is scaled by the client's scale for the backward pass and the gradients
    unscaled before the step (the GradScaler rule: a non-finite step is skipped and the scale
    halved). Returns whether the step was taken.
    """
    optimizer.zero_grad(set_to_none=True)
    scale = scales.scale
    (objective * scale[0]).backward()
    grads = [p.grad for p in params if p.grad is not None]
    finite = bool(torch.isfinite(objective)) and all(bool(torch.isfinite(g).all()) for g in grads)
    flag = torch.tensor([finite], device=scale.device)
    scales.update(~flag, flag)
    if not finite:
        return False
    if scales.dynamic:
        for g in grads:
            g.div_(scale[0])
    optimizer.step()
    return True
