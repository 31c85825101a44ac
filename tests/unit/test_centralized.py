"""centralized.py: the pooled baseline's epoch."""

import torch
from helpers import TINY_NEGATIVES

from feddmmr.centralized import CentralizedEpochs
from feddmmr.config import TrainConfig
from feddmmr.run_setup import prepare_run

SMALL = dict(max_seq_len=10, hidden_dim=16, num_heads=2, num_blocks=1, top_users=20, threads=1, dropout=0.0)


def epoch_losses(tmp_path, name, epochs, **options):
    config = TrainConfig(
        run_dir=str(tmp_path / name), centralized=True, learning_rate=1e-2, **SMALL, **options
    )
    run = prepare_run(config)
    try:
        trainer = CentralizedEpochs(run)
        records = [trainer.train(epoch) for epoch in range(1, epochs + 1)]
        return records, {n: p.detach().clone() for n, p in run.model.named_parameters()}
    finally:
        run.close()


def test_epochs_train_every_window_and_repeat_with_the_seed(tmp_path):
    records, weights = epoch_losses(tmp_path, "a", 2, **TINY_NEGATIVES)
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < losses[0] and all(r["skipped_steps"] == 0 for r in records)
    again, same_weights = epoch_losses(tmp_path, "b", 2, **TINY_NEGATIVES)
    assert [r["train_loss"] for r in again] == losses
    assert all(torch.equal(p, same_weights[n]) for n, p in weights.items())


def test_the_full_softmax_epoch_trains_against_every_item(tmp_path):
    records, _ = epoch_losses(tmp_path, "full", 2, loss="ce-full")
    assert records[1]["train_loss"] < records[0]["train_loss"]
