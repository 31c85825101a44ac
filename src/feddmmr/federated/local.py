"""What a round hands a local engine and what it gives back: the round's context, how clients
train locally (`LocalTraining`), each client's report, and the `Engine` protocol every engine
(engines/) follows. Kept below the engines, so that the round, the attack and the Flower transport
name these types without importing an engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from feddmmr.federated.postprocess import ClientPostprocessor, client_postprocessors
from feddmmr.federated.precision import LossScales, Precision
from feddmmr.model.losses import AuxiliaryWeights, Objective, gbce_beta

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
    gbce_beta: float = 1.0  # loss=gbce: the positive's weight (model/losses.py, gbce_beta)
    # Applied to every client's update before it leaves the client (federated/postprocess.py)
    postprocessors: tuple[ClientPostprocessor, ...] = ()

    @classmethod
    def of(
        cls,
        config,
        num_items: int,
        precision: Precision,
        *,
        memory: ClientMemories | None = None,
        frozen: frozenset[str] = frozenset(),
    ) -> LocalTraining:
        """How a run's clients train, from its settings (a TrainConfig or Flower's run config):
        the one place they are read, for the server's engines and for a Flower node's."""
        return cls(
            config.learning_rate,
            config.weight_decay,
            config.loss,
            precision,
            memory=memory,
            auxiliary=AuxiliaryWeights(
                config.load_balance_weight, config.alignment_weight, config.contrastive_weight
            ),
            frozen=frozen,
            optimizer=config.local_optimizer,
            gbce_beta=positive_weight(config, num_items),
            postprocessors=client_postprocessors(config.dp_clip_norm, config.update_noise),
        )

    def postprocess(
        self,
        params: dict[str, torch.Tensor],
        global_params: dict[str, torch.Tensor],
        weights: torch.Tensor,
        users: list[int],
        context: RoundContext,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Clients' updated parameters [clients, ...] and weights as they leave the clients."""
        for postprocessor in self.postprocessors:
            params, weights = postprocessor(params, global_params, weights, users, context)
        return params, weights

    @property
    def objective(self) -> Objective:
        """What each local step minimises (the model's `loss`)."""
        return Objective(self.loss, self.gbce_beta, self.auxiliary)

    @property
    def equal_weights(self) -> bool:
        """Whether every client's update leaves with weight 1 (DP's clipping)."""
        return any(p.equal_weights for p in self.postprocessors)


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
    # The engine's own figures of the round, for its line of metrics.jsonl (Flower: node_seconds)
    metrics: dict = field(default_factory=dict)


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


def positive_weight(config, num_items: int) -> float:
    """loss=gbce: the weight of the positive's log-probability, from the run's sampling rate and
    calibration (model/losses.py, gbce_beta); 1 for the other losses."""
    return gbce_beta(config.num_negatives, num_items, config.gbce_t) if config.loss == "gbce" else 1.0
