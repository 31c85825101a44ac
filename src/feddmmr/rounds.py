"""One federated round as values in, values out (Flower's `configure_train` / `aggregate_train`,
pfl-research's `Algorithm`).

`FederatedRound` is built once from the run's config. Each round, `run` reads top to bottom: plan
it (which clients, with their batches), train the clients on the engine from the global parameters,
let the plug-ins take part (the attack's fake clients), check what came back, aggregate, take the
server step. The global parameters go in as a dict and the new ones come out as a dict in
`RoundOutcome`: the run's model is never touched here (the caller loads the outcome), and engines
train on their own working copy of the model.

What changes a client's update before it leaves the client (DP's clipping, update noise) is the
clients' postprocessors (federated/postprocess.py); DP's server side is its aggregation rule
(DPFedAvg) and its Poisson sampling, both chosen here once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from feddmmr import streams
from feddmmr.config import TrainConfig
from feddmmr.data.split import LeaveOneOut
from feddmmr.engines.base import working_copy
from feddmmr.errors import NodesLost, TrainingDiverged, diverged_advice
from feddmmr.federated.aggregation import Aggregator, ServerAdam, ServerMomentum, make_aggregator
from feddmmr.federated.attacks import Attack
from feddmmr.federated.batches import BatchSettings, ClientBatches, client_rng, make_client_batches
from feddmmr.federated.local import (
    Aggregate,
    ClientReport,
    Engine,
    LocalTraining,
    Progress,
    RoundContext,
    RoundResult,
)
from feddmmr.federated.privacy import DPFedAvg, poisson_sample, privacy_spent
from feddmmr.federated.sampling import sample_clients

log = logging.getLogger(__name__)


def payload_bytes(params: dict[str, torch.Tensor], without: frozenset[str] = frozenset()) -> int:
    """Bytes of the parameters a client receives or sends (all of them, or all but the frozen)."""
    return sum(p.numel() * p.element_size() for name, p in params.items() if name not in without)


@dataclass(frozen=True)
class RoundPlan:
    """Which clients train in a round, and on what."""

    context: RoundContext
    users: np.ndarray
    batches: list[ClientBatches]


@dataclass(frozen=True)
class RoundOutcome:
    params: dict[str, torch.Tensor]  # the new global parameters (the frozen ones exactly as they were)
    result: RoundResult  # the clients' reports and loss scales
    metrics: dict  # the round's line of metrics.jsonl, before validation


class RoundPlugin(Protocol):
    """Takes part in every round beside the sampled clients (pfl-research's server-side
    postprocessors): it may watch the clients' updates on their way to the aggregate (`join`
    returns the `add` they go through) and send updates of its own after them (`finish`)."""

    def join(self, plan: RoundPlan, add: Aggregate, global_params: dict[str, torch.Tensor]) -> Aggregate: ...

    def finish(
        self, plan: RoundPlan, engine: Engine, local: LocalTraining, add: Aggregate, global_params: dict
    ) -> None: ...

    def metrics(self) -> dict: ...


class AttackClients:
    """The simulated attack's fake clients (federated/attacks.py) as a round plug-in. They train
    after the genuine clients, so the genuine updates are exactly those of a round without them;
    on Flower they train on a local engine in the server's process (`engine`), since no SuperNode
    holds them."""

    def __init__(
        self, attack: Attack, client_fraction: float, settings: BatchSettings, model: torch.nn.Module, engine
    ) -> None:
        self.attack, self.client_fraction, self.settings = attack, client_fraction, settings
        # Model poisoning reads the global model's user representation; data poisoning trains as clients do.
        self.model = None if attack.kind == "data-poisoning" else working_copy(model)
        self.engine = engine

    def join(self, plan: RoundPlan, add: Aggregate, global_params: dict[str, torch.Tensor]) -> Aggregate:
        return self.attack.join_round(plan.context.round, self.client_fraction, add, global_params)

    def finish(self, plan, engine, local, add, global_params) -> None:
        if self.model is not None:
            self.model.load_state_dict(global_params, strict=False)
        self.attack.finish_round(
            plan.context, self.engine or engine, self.settings, local, add, self.model, global_params
        )

    def metrics(self) -> dict:
        return {"attack_clients": len(self.attack.round_users)}


class FederatedRound:
    def __init__(
        self,
        config: TrainConfig,
        split: LeaveOneOut,
        local: LocalTraining,
        server_optimizer: ServerAdam | ServerMomentum | None = None,
        plugins: tuple[RoundPlugin, ...] = (),
        run_dir: Path | None = None,
    ) -> None:
        """`run_dir` only names the folder in the advice of an error."""
        self.config, self.split, self.local = config, split, local
        self.server_optimizer, self.plugins, self.run_dir = server_optimizer, plugins, run_dir
        self.settings = BatchSettings.of(config, split.num_items)
        self.eligible = np.flatnonzero(split.num_train_targets > 0)
        self.dp = config.dp_clip_norm is not None
        # DP needs Poisson sampling (the accountant's assumption) and its own aggregation rule.
        self.sample: Callable[..., np.ndarray] = poisson_sample if self.dp else sample_clients

    def plan(self, round_number: int) -> RoundPlan:
        c = self.config
        users = self.sample(self.eligible, c.client_fraction, c.seed, round_number)
        batches = [
            make_client_batches(
                int(u), self.split.train_sequence(u), self.settings, client_rng(c.seed, round_number, int(u))
            )
            for u in users
        ]
        return RoundPlan(RoundContext(round_number, c.seed), users, batches)

    def aggregator(self, plan: RoundPlan, global_params: dict[str, torch.Tensor]) -> Aggregator:
        c = self.config
        if not self.dp:
            return make_aggregator(c.aggregator, global_params, c.robust_fraction)
        noise = torch.Generator().manual_seed(streams.round_seed(c.seed, plan.context.round) + 1)
        expected = c.client_fraction * len(self.eligible)
        return DPFedAvg(global_params, c.dp_clip_norm, c.dp_noise_multiplier, expected, noise)

    def run(
        self,
        engine: Engine,
        global_params: dict[str, torch.Tensor],
        round_number: int,
        progress_factory: Callable[[int, int], Progress] | None = None,
    ) -> RoundOutcome:
        """`progress_factory(round_number, clients)`: a callback told of each client done."""
        torch.manual_seed(streams.round_seed(self.config.seed, round_number))  # the clients' dropout
        started = time.perf_counter()
        plan = self.plan(round_number)
        progress = progress_factory(round_number, len(plan.batches)) if progress_factory else None
        aggregator = self.aggregator(plan, global_params)
        add = aggregator.add
        for plugin in self.plugins:
            add = plugin.join(plan, add, global_params)
        result = engine.train(plan.context, global_params, plan.batches, self.local, add, progress)
        for plugin in self.plugins:
            plugin.finish(plan, engine, self.local, aggregator.add, global_params)
        self.check(plan, result)
        params = aggregator.result()
        if self.server_optimizer is not None:
            params = self.server_optimizer.step(global_params, params)
        params.update({name: global_params[name] for name in self.local.frozen})  # never aggregated
        return RoundOutcome(params, result, self.metrics(plan, result, global_params, started))

    def check(self, plan: RoundPlan, result: RoundResult) -> None:
        """Stop a round that has nothing to aggregate (no update arrived, or every one was
        non-finite, or no local step trained); warn of dropped updates and skipped steps."""
        round_number, reports = plan.context.round, result.reports
        if len(plan.users) and not reports:  # Flower: no node's update arrived
            if result.skipped is not None:
                log.warning(
                    "round %d: no update (%s): the model stays as it was", round_number, result.skipped
                )
            else:
                raise NodesLost(
                    f"round {round_number}: no update arrived from any of its {len(plan.users)} clients (every "
                    f"node failed, missed --flower-round-timeout {self.config.flower_round_timeout:g} s or was "
                    f"refused: the warnings above say why), so the round has nothing to aggregate; the "
                    f"checkpoints of round {round_number - 1} are intact. Fix the nodes or the setting the "
                    f"warnings name, then continue with `feddmmr train --resume {self.run_dir}`"
                )
        dropped = sorted(r.user for r in reports if r.dropped)
        if dropped:
            log.warning(
                "round %d: dropped the updates of %d clients (non-finite weights): users %s",
                round_number,
                len(dropped),
                [int(self.split.data.user_ids[u]) for u in dropped[:20]],
            )
            if len(dropped) == len(reports):
                raise TrainingDiverged(
                    f"round {round_number}: every client's update ({len(dropped)}) was non-finite, so the round "
                    f"has nothing to aggregate and training cannot go on; the checkpoints of round "
                    f"{round_number - 1} are intact. {diverged_advice(self.config, self.run_dir)}"
                )
        check_skipped_steps(reports, round_number, self.config, self.run_dir)

    def metrics(
        self, plan: RoundPlan, result: RoundResult, global_params: dict[str, torch.Tensor], started: float
    ) -> dict:
        c, reports = self.config, result.reports
        # The Flower engine reports only the clients whose node replied: average over those.
        targets = {b.user: b.num_targets for b in plan.batches}
        trained = [r for r in sorted(reports, key=lambda r: r.user) if r.steps]  # no step: no loss to average
        weights = np.array([targets[r.user] for r in trained], dtype=np.float64)
        losses = np.array([r.mean_loss for r in trained])
        record = {
            "round": plan.context.round,
            "clients": len(plan.users),
            "failed_clients": len(plan.users) - len(reports),
            "train_loss": float(np.average(losses, weights=weights)) if trained else None,
            "skipped_steps": int(sum(r.skipped_steps for r in reports)),
            "dropped_clients": sum(1 for r in reports if r.dropped),
            # On the wire (the model's float32 payload, framing not counted): every sampled client
            # receives the whole model, and each that replies sends back what it trains.
            "bytes_down": len(plan.users) * payload_bytes(global_params),
            "bytes_up": len(reports) * payload_bytes(global_params, without=self.local.frozen),
        }
        record.update(result.metrics)
        for plugin in self.plugins:
            record.update(plugin.metrics())
        record["train_seconds"] = time.perf_counter() - started
        if self.dp:
            epsilon = privacy_spent(c.dp_noise_multiplier, c.client_fraction, plan.context.round, c.dp_delta)
            record["dp"] = {"epsilon": epsilon if math.isfinite(epsilon) else None, "delta": c.dp_delta}
        return record


def check_skipped_steps(reports: list[ClientReport], round_number: int, config, run_dir) -> None:
    """One line for the round's skipped steps (a non-finite loss or gradient: never trained on),
    and a stop when no step of the round trained: its update would be the model it started from."""
    skipped = sum(r.skipped_steps for r in reports)
    if not skipped:
        return
    steps = skipped + sum(r.steps for r in reports)
    clients = sum(1 for r in reports if r.skipped_steps)
    log.warning(
        "round %d: skipped %d of %d local steps (%.1f%%) in %d of %d clients: a non-finite loss or gradient",
        round_number,
        skipped,
        steps,
        100 * skipped / steps,
        clients,
        len(reports),
    )
    if skipped == steps:
        raise TrainingDiverged(
            f"round {round_number}: every local step ({steps}) had a non-finite loss or gradient, so nothing "
            f"trained; the checkpoints of round {round_number - 1} are intact. "
            f"{diverged_advice(config, run_dir)}"
        )
