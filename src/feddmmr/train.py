"""A training run from start to finish: set up (run_setup.py), rounds, validation, early
stopping, checkpoints (run_state.py), then one test.

One federated round reads top to bottom in rounds.py (`FederatedRound.run`: sample clients, build
their batches, train them locally on the engine, combine their updates, FedAvg then by default a
FedAdam server step); `run_round` hands it the global model's values and loads the new ones.
`train` runs the rounds: validation when the schedule says so, early stopping, checkpoints, then
one test.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from feddmmr.callbacks import (
    STOP,
    Callback,
    LogRound,
    OnRound,
    SaveBestCheckpoint,
    SaveLastCheckpoint,
    StopEarly,
    WriteMetrics,
)
from feddmmr.centralized import CentralizedEpochs
from feddmmr.checkpoint import json_value, load_checkpoint, write_json
from feddmmr.config import TrainConfig
from feddmmr.engines import make_engine
from feddmmr.errors import TrainingDiverged, diverged_advice
from feddmmr.evaluation import group_metrics, metrics_from_ranks
from feddmmr.federated.attacks import exposure_rate
from feddmmr.federated.local import Engine
from feddmmr.progress import round_bars
from feddmmr.rounds import AttackClients, FederatedRound
from feddmmr.run_setup import prepare_run
from feddmmr.run_state import Run, load_memory
from feddmmr.trackers import make_trackers

log = logging.getLogger(__name__)

# progress_factory(round_number, clients_in_round) -> callback(clients_done_since_last_call)
ProgressFactory = Callable[[int, int], Callable[[int], None]]


# ---------------------------------------------------------------------------------------------
# One round


def federated_round(run: Run, attack_engine: Engine | None = None) -> FederatedRound:
    """The run's round, built once from its config (rounds.py). `attack_engine` trains the
    simulated fake clients (default: the round's engine; on Flower a local engine in this
    process, since no SuperNode holds them)."""
    c, training = run.config, run.training
    plugins = ()
    if training.attack is not None:
        settings = run.batch_settings()
        plugins = (AttackClients(training.attack, c.client_fraction, settings, run.model, attack_engine),)
    return FederatedRound(c, run.split, run.local_training(), training.server_optimizer, plugins, run.run_dir)


def run_round(
    run: Run,
    engine: Engine,
    round_number: int,
    progress_factory: ProgressFactory | None = None,
    federated: FederatedRound | None = None,
) -> dict:
    """One round: it trains from the global model's values, and the run's model takes the new
    ones. Returns the round's metrics."""
    federated = federated or federated_round(run)
    outcome = federated.run(engine, run.params(), round_number, progress_factory)
    run.training.precision.settle(outcome.result.loss_scales)
    run.model.load_state_dict(outcome.params, strict=False)
    return outcome.metrics


def stop_if_not_finite(run: Run, round_number: int) -> None:
    """The run-level guard: a global model with a NaN or inf weight is never validated or saved
    (the engines already drop non-finite client updates; a server step can still overflow)."""
    parameters = dict(run.model.named_parameters())
    if bool(
        torch.stack([torch.isfinite(p).all() for p in parameters.values()]).all()
    ):  # one host sync a round
        return
    broken = [name for name, p in parameters.items() if not bool(torch.isfinite(p).all())]
    c = run.config
    raise TrainingDiverged(
        f"round {round_number}: the global model's weights became non-finite (NaN or inf in "
        f"{', '.join(broken[:3])}{' ...' if len(broken) > 3 else ''}); nothing of this round was saved, the "
        f"checkpoints of round {round_number - 1} are intact. " + diverged_advice(c, run.run_dir)
    )


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class RunResult:
    run_dir: Path
    final: dict
    history: list[dict]


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    progress_factory: ProgressFactory | None = None,
    engine: Engine | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> RunResult:
    """Run (or resume) training. After each round the checkpoints and metrics.jsonl are written,
    then `on_round(record)` and each of `callbacks` runs (callbacks.py). `progress`: the command
    line's bars over the rounds and each round's clients (in a terminal or notebook). `engine`
    overrides the one named in the config: the Flower ServerApp passes an engine that sends each
    round's local updates to Flower clients (a run with engine=flower starts as a Flower app:
    `run_flower_simulation`, or `flwr run`)."""
    if progress:
        with round_bars(config.num_rounds) as (bar_factory, bar_on_round):

            def both(record: dict) -> None:
                bar_on_round(record)
                if on_round is not None:
                    on_round(record)

            return train(
                config,
                resume=resume,
                on_round=both,
                progress_factory=bar_factory,
                engine=engine,
                callbacks=callbacks,
            )
    if config.engine == "flower" and engine is None and not config.centralized:
        raise ValueError(
            "engine=flower runs as a Flower app: feddmmr.flower.simulation.run_flower_simulation"
            "(config), `feddmmr train --engine flower` or `flwr run` (docs/DEPLOY.md)"
        )
    nodes = engine if config.model == "feddmmr" and hasattr(engine, "evaluate_on_nodes") else None
    run = prepare_run(config, resume=resume, memories_on_nodes=nodes is not None)
    run.evaluation.nodes = nodes
    try:
        return run_rounds(run, engine, on_round, progress_factory, callbacks)
    finally:
        run.close()


def run_rounds(
    run: Run,
    engine: Engine | None,
    on_round: Callable[[dict], None] | None,
    progress_factory: ProgressFactory | None,
    callbacks: Sequence[Callback],
) -> RunResult:
    """The rounds of a prepared run, from where it stands to the last (or early stopping), then the test."""
    c = run.config
    optimizer = None  # the centralised baseline's, kept in last.pt
    if c.centralized:  # one "round" is an epoch of one model over all users pooled
        epochs = CentralizedEpochs(run)
        optimizer, train_round = epochs.optimizer, epochs.train
    else:

        def local_engine(name: str) -> Engine:
            return make_engine(
                name,
                run.model,
                chunk_clients=c.chunk_clients,
                chunk_windows=c.chunk_windows,
                **run.batch_settings().engine_negatives(),
            )

        if engine is None:
            engine = local_engine(c.engine)
        attack_engine = (
            local_engine("vectorized") if run.training.attack is not None and c.engine == "flower" else None
        )
        federated = federated_round(run, attack_engine)

        def train_round(round_number: int) -> dict:
            return run_round(run, engine, round_number, progress_factory, federated)

    trackers = make_trackers(run)
    try:
        return run_until_done(
            run,
            train_round,
            [
                StopEarly(),
                SaveBestCheckpoint(),
                SaveLastCheckpoint(optimizer),
                WriteMetrics(),
                LogRound(),
                *trackers,
                *([OnRound(on_round)] if on_round else []),
                *callbacks,
            ],
        )
    finally:
        for tracker in trackers:
            tracker.close()


def run_until_done(run: Run, train_round: Callable[[int], dict], callbacks: list[Callback]) -> RunResult:
    """Round after round to the last, or until a callback stops training (early stopping does),
    then the test. Each callback sees the start and end of each round and the final figures
    (callbacks.py; a plain object may have only the hooks it wants)."""
    state, stop = run.state, False
    while state.round < run.config.num_rounds and not state.stopped_early and not stop:
        round_number = state.round + 1
        notify(callbacks, "on_round_start", run, round_number)
        record = train_round(round_number)
        stop_if_not_finite(run, round_number)
        record["validated"] = run.evaluation.schedule.validates(round_number)
        eval_started = time.perf_counter()
        if record["validated"]:
            record["val"], diagnostics = run.validate(round_number)
            record.update(diagnostics)
            if run.training.attack is not None:  # its progress: targets in the validation users' top 10
                targets = run.training.attack.targets
                record["val"]["ER@10"] = exposure_rate(run.model, run.evaluation.valid_set, targets)
        else:
            record["next_validation"] = run.evaluation.schedule.next_validation(round_number)
        record["eval_seconds"] = time.perf_counter() - eval_started
        state.round = round_number
        state.history.append(record)
        stop = any([answer is STOP for answer in notify(callbacks, "on_round_end", run, record)])

    final = final_evaluation(run)
    notify(callbacks, "on_run_end", run, final)
    return RunResult(run.run_dir, final, state.history)


def notify(callbacks: Sequence[Callback], hook: str, *args) -> list:
    """Call `hook` on every callback that has it, in order; their answers."""
    return [getattr(callback, hook)(*args) for callback in callbacks if hasattr(callback, hook)]


def final_evaluation(run: Run) -> dict:
    """Test once, on the best validated model, ranked both ways: `test` by the run's own protocol
    (`eval`), and `test_full` (every unread item) or `test_sampled` (1:N candidates) by the other,
    so that a run compares with papers of either kind. With new items (`--cold-items`), each also
    by group of users (`test_groups`, `test_full_groups` ...): `warm` (a trained test item) and
    `cold` (a new one)."""
    best = load_checkpoint(run.checkpoints / "best.pt", required=("model", "round", "val"))
    run.model.load_state_dict({k: v.to(run.device) for k, v in best["model"].items()})
    load_memory(run, best)  # the memories of the best round
    groups = run.split.user_groups()
    own, other = run.config.eval, "full" if run.config.eval == "sampled" else "sampled"
    final = {
        "best_round": best["round"],
        "valid": best["val"],
        "eval": own,
        "rounds_run": run.state.round,
        "stopped_early": run.state.stopped_early,
        "train_seconds": sum(r["train_seconds"] for r in run.state.history),
    }
    for key, mode in (("test", own), (f"test_{other}", other)):
        ranks = run.test_ranks(best["round"], mode)
        if ranks is None:
            log.info("test ranked %s only: FedDMMR's nodes rank with the run's own protocol", own)
            continue
        final[key] = metrics_from_ranks(ranks)
        if groups:
            final[f"{key}_groups"] = group_metrics(ranks, groups)
    if (
        run.training.attack is not None
    ):  # did the promotion work: how many test users get a target in their top 10
        targets = run.training.attack.targets
        final["attack"] = {
            "kind": run.config.attack,
            "targets": [json_value(i) for i in run.split.data.item_ids[targets]],
            "ER@10": exposure_rate(run.model, run.evaluation.test_set, targets),
        }
    warnings = validation_warnings(run, final)
    if warnings:
        final["warnings"] = warnings
    write_json(run.run_dir / "final.json", final)
    valid, test = final["valid"], final["test"]
    log.info(
        "best round %d: validation HR@10 %.4f NDCG@10 %.4f | test HR@10 %.4f NDCG@10 %.4f  (%s)",
        final["best_round"],
        valid["HR@10"],
        valid["NDCG@10"],
        test["HR@10"],
        test["NDCG@10"],
        run.run_dir,
    )
    if f"test_{other}" in final:
        log.info(
            "test ranked %s: HR@10 %.4f NDCG@10 %.4f",
            "against every unread item"
            if other == "full"
            else f"against {run.config.num_negatives_eval} sampled negatives",
            final[f"test_{other}"]["HR@10"],
            final[f"test_{other}"]["NDCG@10"],
        )
    if "attack" in final:
        log.info(
            "attack %s: ER@10 %.4f (the share of test users with a target item in their full-ranking top 10)",
            final["attack"]["kind"],
            final["attack"]["ER@10"],
        )
    for key in (k for k in ("test", f"test_{other}") if f"{k}_groups" in final):
        log.info(
            "%s by test item: %s",
            "test" if key == "test" else f"test ranked {other}",
            describe_groups(final[f"{key}_groups"]),
        )
    for warning in warnings:
        log.warning("%s", warning)
    return final


# A last validation below this share of the best one: the model fell apart after its best round.
COLLAPSE_SHARE = 0.5


def validation_warnings(run: Run, final: dict) -> list[str]:
    """What a finished run's validation says went wrong, for the log's last lines and final.json: a
    best round no better than ranking at random, or a collapse after the best round."""
    c, warnings = run.config, []
    metric = c.select_metric
    best = final["valid"]["HR@10"]
    candidates = c.num_negatives_eval + 1 if c.eval == "sampled" else run.split.num_items
    chance = min(1.0, 10 / candidates)  # HR@10 of a random ranking
    if best <= chance:
        warnings.append(
            f"the best validation HR@10, {best:.4f}, is no better than ranking at random ({chance:.4f}): "
            f"the model learned nothing (too few rounds, or a learning rate far too high or too low: now "
            f"{c.learning_rate:g})"
        )
    validated = [r for r in run.state.history if r.get("validated")]
    if validated and validated[-1]["round"] != final["best_round"]:
        last, peak = validated[-1]["val"][metric], final["valid"][metric]
        if last < COLLAPSE_SHARE * peak:
            warnings.append(
                f"validation {metric} collapsed after round {final['best_round']}: {peak:.4f} there, "
                f"{last:.4f} at round {validated[-1]['round']}; the tested model (best.pt) is round "
                f"{final['best_round']}'s, but training diverged after it: {diverged_advice(c, run.run_dir)}"
            )
    return warnings


def describe_groups(groups: dict[str, dict]) -> str:
    """'new (139 users) HR@10 0.2810 NDCG@10 0.1500 | trained (861) ...' for the log."""
    names = {"cold": "new", "warm": "trained"}
    return " | ".join(
        f"{names.get(name, name)} ({g['users']} users)"
        + ("" if "HR@10" not in g else f" HR@10 {g['HR@10']:.4f} NDCG@10 {g['NDCG@10']:.4f}")
        for name, g in sorted(groups.items())
    )
