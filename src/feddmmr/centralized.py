"""The centralised baseline: the same model trained on every user's windows pooled, with one
optimiser (the clients' settings: --local-optimizer, --learning-rate, --batch-size); one "round"
of the run loop is one epoch.

Negatives as in federated training, except shared ones (--negatives shared): a batch pools many
users' windows, so its N negatives are drawn once per batch from the whole catalogue (a negative
that is a position's own target is masked, as everywhere; one that another user has read is not
excluded)."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from feddmmr import streams
from feddmmr.checkpoint import load_checkpoint
from feddmmr.data.negatives import sample_distinct_negatives
from feddmmr.engines.base import guarded_step
from feddmmr.errors import TrainingDiverged, diverged_advice
from feddmmr.federated.adam import TORCH_OPTIMIZERS
from feddmmr.federated.batches import BatchSettings, client_rng, make_client_batches
from feddmmr.federated.local import positive_weight
from feddmmr.model.losses import next_item_loss
from feddmmr.run_state import Run

log = logging.getLogger(__name__)


class CentralizedEpochs:
    def __init__(self, run: Run) -> None:
        c = run.config
        self.run = run
        self.optimizer = TORCH_OPTIMIZERS[c.local_optimizer](
            run.model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay
        )
        if run.state.round > 0:  # resumed: the optimiser's state lives in the last checkpoint
            self.optimizer.load_state_dict(
                load_checkpoint(run.checkpoints / "last.pt", required=("optimizer",))["optimizer"]
            )

    def train(self, round_number: int) -> dict:
        """One epoch: every user's windows, shuffled together, in batches of `batch_size`."""
        run, optimizer = self.run, self.optimizer
        c, split = run.config, run.split
        torch.manual_seed(streams.round_seed(c.seed, round_number))
        started = time.perf_counter()
        settings = BatchSettings.of(c, split.num_items, batch_size=1 << 30, epochs=1)
        per_batch_negatives = settings.negatives == "shared"
        if per_batch_negatives:  # the windows' targets only; the negatives are drawn per batch below
            settings = dataclasses.replace(settings, negatives="all")
        eligible = np.flatnonzero(split.num_train_targets > 0)
        per_user = [
            make_client_batches(
                int(u), split.train_sequence(u), settings, client_rng(c.seed, round_number, int(u))
            )
            for u in eligible
        ]
        inputs = torch.from_numpy(np.concatenate([b.inputs[0] for b in per_user]))
        candidates = torch.from_numpy(np.concatenate([b.candidates[0] for b in per_user]))
        order = torch.from_numpy(
            np.random.default_rng([c.seed, streams.CENTRALIZED_ORDER, round_number]).permutation(len(inputs))
        )
        model = run.model
        model.train()
        total, count, skipped = 0.0, 0.0, 0
        scales = run.training.precision.client_scales(1, run.device)
        shared = None
        beta = positive_weight(c, split.num_items)
        negatives_rng = np.random.default_rng([c.seed, streams.CENTRALIZED_NEGATIVES, round_number])
        for start in range(0, len(order), c.batch_size):
            rows = order[start : start + c.batch_size]
            batch_inputs, batch_candidates = inputs[rows].to(run.device), candidates[rows].to(run.device)
            if per_batch_negatives:
                drawn = sample_distinct_negatives(
                    np.zeros(0, dtype=np.int64), split.num_items, 1, c.num_negatives, negatives_rng
                )
                shared = torch.from_numpy(drawn[0]).to(run.device)
            with run.training.precision.autocast():
                if c.loss == "ce-full":
                    loss_sum, n = model.full_softmax_loss(batch_inputs, batch_candidates[..., 0])
                else:
                    scores = model(batch_inputs, batch_candidates, shared)
                    loss_sum, n = next_item_loss(scores.float(), batch_candidates[..., 0] > 0, c.loss, beta)
            if not guarded_step(loss_sum / n.clamp(min=1), list(model.parameters()), optimizer, scales):
                skipped += 1
                continue
            total += float(loss_sum.detach())
            count += float(n)
        run.training.precision.settle([scales])
        steps = -(-len(order) // c.batch_size)
        if skipped:
            log.warning(
                "round %d: skipped %d of %d steps (%.1f%%): a non-finite loss or gradient",
                round_number,
                skipped,
                steps,
                100 * skipped / steps,
            )
        if skipped == steps:
            raise TrainingDiverged(
                f"epoch {round_number}: every step ({steps}) had a non-finite loss or gradient, so "
                f"nothing trained; the checkpoints of epoch {round_number - 1} are intact. "
                f"{diverged_advice(c, run.run_dir)}"
            )
        return {
            "round": round_number,
            "clients": len(eligible),
            "train_loss": total / count if count else None,
            "skipped_steps": skipped,
            "train_seconds": time.perf_counter() - started,
        }
