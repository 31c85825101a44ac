"""A run's state: what it holds in memory (`Run`) and what its checkpoints hold (`RunState`,
`checkpoint_state`, `restore`), so that a run killed at any moment resumes exactly."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from feddmmr.checkpoint import json_value, load_checkpoint, write_text
from feddmmr.config import TrainConfig
from feddmmr.data.split import LeaveOneOut
from feddmmr.errors import InputError
from feddmmr.evaluation import EvalSet, evaluate, held_out_ranks, metrics_from_ranks, router_usage
from feddmmr.federated.aggregation import ServerAdam, ServerMomentum
from feddmmr.federated.batches import BatchSettings
from feddmmr.federated.local import LocalTraining
from feddmmr.federated.precision import Precision
from feddmmr.federated.schedule import EarlyStopping, ValidationSchedule
from feddmmr.memory.clients import ClientMemories
from feddmmr.memory.two_tier import MemoryState
from feddmmr.memory.two_tier import summary as memory_summary
from feddmmr.model.sasrec import SASRec

if TYPE_CHECKING:  # Flower is an optional extra
    from feddmmr.federated.attacks import Attack
    from feddmmr.flower.engine import FlowerEngine
    from feddmmr.model.feddmmr import FedDMMR
    from feddmmr.run_directory import RunLock, RunLog

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything a resumed run needs besides the files it can rebuild from the config."""

    round: int = 0
    early_stopping: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=0))
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Training:
    """How the run trains, built once from the config (run_setup.py)."""

    precision: Precision  # the loss scale under fp16 (run state: it is checkpointed)
    memory: ClientMemories | None = None  # FedDMMR: every user's memory (None on Flower: the nodes hold them)
    frozen: frozenset[str] = frozenset()  # parameters the stage keeps as they are
    server_optimizer: ServerAdam | ServerMomentum | None = None  # None: plain FedAvg
    attack: Attack | None = None  # simulated fake clients (--attack)


@dataclass
class Evaluation:
    """What the run validates and tests on, and when."""

    schedule: ValidationSchedule
    valid_set: EvalSet
    test_set: EvalSet
    # FedDMMR on Flower: the engine whose nodes hold the memories and evaluate
    nodes: FlowerEngine | None = None


@dataclass
class RunFiles:
    """The run directory's lock, held while the run writes to it, and RUN_DIR/run.log."""

    lock: RunLock
    run_log: RunLog

    def close(self) -> None:
        """Stop writing run.log, and let another process write to run_dir (the OS releases the
        lock too when this process ends)."""
        self.run_log.close()
        self.lock.release()


@dataclass
class Run:
    config: TrainConfig
    run_dir: Path
    split: LeaveOneOut
    model: SASRec | FedDMMR
    state: RunState
    training: Training
    evaluation: Evaluation
    files: RunFiles | None = None

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def batch_settings(self) -> BatchSettings:
        return BatchSettings.of(self.config, self.split.num_items)

    def local_training(self) -> LocalTraining:
        c, training = self.config, self.training
        return LocalTraining.of(
            c, self.split.num_items, training.precision, memory=training.memory, frozen=training.frozen
        )

    def memory_slots(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every user's retrieved memory (items, mask) [users, K], what evaluation reads; None for FedSASRec."""
        return (
            None
            if self.training.memory is None
            else self.training.memory.retrieve(self.training.memory.state)
        )

    def validate(self, round_number: int) -> tuple[dict[str, float], dict]:
        """(validation metrics, diagnostics) of the model after `round_number`."""
        if self.evaluation.nodes is not None:
            best = self.state.early_stopping.best_round
            ranks, diagnostics = self.evaluation.nodes.evaluate_on_nodes(
                self.params(),
                "valid",
                self.evaluation.valid_set,
                round_number,
                round_number,
                [best] if best else [],
            )
            if self.model.mixes:
                diagnostics.update(self.model.scalars())
            return metrics_from_ranks(ranks), diagnostics
        metrics = evaluate(
            self.model,
            self.evaluation.valid_set,
            self.config.eval,
            precision=self.training.precision,
            memory=self.memory_slots(),
        )
        return metrics, self.diagnostics()

    def test_ranks(self, best_round: int, mode: str | None = None) -> np.ndarray | None:
        """[users] 0-based test rank of each user's held-out item under the model as it is now (the
        best round's, with that round's memories), ranked as `mode` says (default: the run's own
        `eval`). None where the nodes hold the memories and `mode` is not the run's own: they rank
        only as the run does."""
        mode = mode or self.config.eval
        if self.evaluation.nodes is not None:
            if mode != self.config.eval:
                return None
            ranks, _ = self.evaluation.nodes.evaluate_on_nodes(
                self.params(), "test", self.evaluation.test_set, self.state.round, best_round, [best_round]
            )
            return np.asarray(ranks)
        return held_out_ranks(
            self.model,
            self.evaluation.test_set,
            mode,
            precision=self.training.precision,
            memory=self.memory_slots(),
        )

    def diagnostics(self) -> dict:
        """FedDMMR, per validated round: mean router weight per expert, gate g, memory summary."""
        if self.training.memory is None:
            return {}
        out = {"memory": memory_summary(self.training.memory.state)}
        if self.model.mixes:
            out["router_weights"] = router_usage(
                self.model, self.evaluation.valid_set, self.memory_slots(), precision=self.training.precision
            )
            out.update(self.model.scalars())
        return out


def checkpoint_state(run: Run) -> dict:
    st = run.state
    return {
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "model_args": run.model.model_args(),
        # the dataset's item id of each dense id (index 0: padding): a checkpoint alone maps items
        "item_ids": [None] + [json_value(i) for i in run.split.data.item_ids[1:]],
        "round": st.round,
        "early_stopping": vars(st.early_stopping).copy(),
        "history": st.history,
        "stopped_early": st.stopped_early,
        "loss_scale": run.training.precision.scale,
        "loss_scale_good_steps": run.training.precision.good_steps,
        **(
            {}
            if run.training.server_optimizer is None
            else {"server_optimizer": run.training.server_optimizer.state_dict()}
        ),
        **memory_entry(run),
    }


def memory_entry(run: Run) -> dict:
    """The memories' part of a checkpoint (its tensors, not copies: save it before the next round)."""
    return {} if run.training.memory is None else {"memory": run.training.memory.state.to_dict()}


def load_memory(run: Run, saved: dict) -> None:
    if run.training.memory is not None:
        if "memory" not in saved:
            raise ValueError(
                f"{run.run_dir}: the checkpoint holds no client memories (a run of another model?)"
            )
        run.training.memory.state = MemoryState.from_dict(saved["memory"])


def restore(run: Run) -> None:
    path = run.checkpoints / "last.pt"
    if not path.exists():
        log.info("resume: %s has no checkpoint yet; starting from round 1", run.run_dir)
        write_metrics(run)  # no round counts: lines of a lost checkpoint's rounds would be repeated
        return
    saved = load_checkpoint(
        path,
        required=("model", "round", "early_stopping", "history", "loss_scale"),
        fix=f"the run cannot continue from it: put back a copy of it, or start a new run from "
        f"this run's best weights with --init-from {run.checkpoints / 'best.pt'}",
    )
    if saved["round"] > run.config.num_rounds:
        raise InputError(
            f"--num-rounds {run.config.num_rounds}: {run.run_dir} has already trained {saved['round']} "
            f"rounds; a resumed run can only go on (give at least {saved['round']})"
        )
    run.model.load_state_dict({k: v.to(run.device) for k, v in saved["model"].items()})
    load_memory(run, saved)
    # The config's patience (resume may change it) judges the saved validations afresh.
    early_stopping = EarlyStopping(**{**saved["early_stopping"], "patience": run.config.patience})
    run.state = RunState(
        round=saved["round"],
        early_stopping=early_stopping,
        history=list(saved["history"]),
        stopped_early=early_stopping.should_stop,
    )
    run.training.precision.scale = saved["loss_scale"]
    run.training.precision.good_steps = saved.get("loss_scale_good_steps", 0)  # absent before it was saved
    if run.training.server_optimizer is not None:
        run.training.server_optimizer.load_state_dict(saved["server_optimizer"])
    # metrics.jsonl may hold a line written after the checkpoint: rewrite it from the checkpoint.
    write_metrics(run)
    log.info("resume: continuing %s after round %d", run.run_dir, run.state.round)


def write_metrics(run: Run) -> None:
    write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.state.history))
