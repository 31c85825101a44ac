"""What happens around each round besides training: early stopping, checkpoints, metrics.jsonl,
logs, the caller's own hooks (progress, experiment trackers, benchmarks' timers). Each is a
`Callback`; `train` runs the built-in ones first, in the order that keeps a killed run resumable
(early stopping's count, best.pt, then last.pt, then the metrics line that last.pt can rewrite),
then the caller's. A callback ends training after the round by returning `STOP` from
`on_round_end` (early stopping does); the run then tests its best round as after the last."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from feddmmr.checkpoint import save_checkpoint
from feddmmr.run_state import Run, checkpoint_state, memory_entry, write_metrics

log = logging.getLogger(__name__)


STOP = object()  # what `on_round_end` returns to end training after this round (nothing else does)


class Callback:
    """Hooks of the run loop; each does nothing unless a subclass says otherwise."""

    def on_round_start(self, run: Run, round_number: int) -> None:
        """Before the round trains."""

    def on_round_end(self, run: Run, record: dict) -> object | None:
        """`record`: the round's line of metrics.jsonl; `run.state` already counts the round.
        Returns `STOP` to end training after it."""

    def on_run_end(self, run: Run, final: dict) -> None:
        """After the test: `final` is final.json's content."""


class StopEarly(Callback):
    """Counts the validations without a gain of the selection metric (--select-metric) and stops
    after `patience` of them (run.state.early_stopping; 0: never). Runs first: best.pt and last.pt
    read its count."""

    def on_round_end(self, run: Run, record: dict) -> object | None:
        if not record["validated"]:
            return None
        state = run.state
        state.early_stopping.update(record["round"], record["val"][run.config.select_metric])
        state.stopped_early = state.early_stopping.should_stop
        return STOP if state.stopped_early else None


class SaveBestCheckpoint(Callback):
    """best.pt: the model (and FedDMMR memories) of a validated round that improved the selection metric (--select-metric)."""

    def on_round_end(self, run: Run, record: dict) -> None:
        if record["validated"] and run.state.early_stopping.best_round == record["round"]:
            state = checkpoint_state(run)
            save_checkpoint(
                run.checkpoints / "best.pt",
                {
                    "model": state["model"],
                    "model_args": state["model_args"],
                    "item_ids": state["item_ids"],
                    "round": record["round"],
                    "val": record["val"],
                    **memory_entry(run),
                },
            )


class SaveLastCheckpoint(Callback):
    """last.pt: everything a resumed run needs, after every round (and the centralised optimiser's state)."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.optimizer = optimizer

    def on_round_end(self, run: Run, record: dict) -> None:
        last = checkpoint_state(run)
        if self.optimizer is not None:
            last["optimizer"] = self.optimizer.state_dict()
        save_checkpoint(run.checkpoints / "last.pt", last)


class WriteMetrics(Callback):
    """metrics.jsonl, one line per round so far, replaced whole (atomically) after each round: a
    full disk or a kill leaves the previous file, never half a line."""

    def on_round_end(self, run: Run, record: dict) -> None:
        write_metrics(run)


def round_line(record: dict) -> str:
    """A round's record as one log line."""
    if record["validated"]:
        val = record["val"]
        shown = f"val HR@10 {val['HR@10']:.4f}  NDCG@10 {val['NDCG@10']:.4f}"
        if "ER@10" in val:  # an attacked run: the share of users with a target in their top 10
            shown += f"  ER@10 {val['ER@10']:.4f}"
    else:
        shown = f"val skipped (next at round {record['next_validation']})"
    if "dp" in record:
        epsilon = record["dp"]["epsilon"]
        shown += (
            "  DP epsilon "
            + ("inf" if epsilon is None else f"{epsilon:.2f}")
            + f" (delta {record['dp']['delta']:g})"
        )
    loss = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"  # None: no step trained
    return (
        f"round {record['round']:>3}  loss {loss}  {shown}  "
        f"train {record['train_seconds']:.1f}s  eval {record['eval_seconds']:.1f}s"
    )


class LogRound(Callback):
    """The round's line in the log: on the console, and in RUN_DIR/run.log."""

    def on_round_end(self, run: Run, record: dict) -> None:
        log.info(round_line(record))
        if run.state.stopped_early:
            log.info(
                "early stopping at round %d: no %s gain in %d validations (best: round %d)",
                record["round"],
                run.config.select_metric,
                run.config.patience,
                run.state.early_stopping.best_round,
            )


class OnRound(Callback):
    """A plain function of the round's record, as a callback."""

    def __init__(self, function: Callable[[dict], None]) -> None:
        self.function = function

    def on_round_end(self, run: Run, record: dict) -> None:
        self.function(record)
