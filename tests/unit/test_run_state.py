"""run_state.py: what a checkpoint holds, and a resumed run's state taken back from it."""

import json

import pytest
import torch
from helpers import TINY_NEGATIVES

from feddmmr.checkpoint import save_checkpoint
from feddmmr.config import TrainConfig
from feddmmr.errors import InputError
from feddmmr.run_setup import prepare_run
from feddmmr.run_state import checkpoint_state

SMALL = dict(
    max_seq_len=10, hidden_dim=16, num_heads=2, num_blocks=1, top_users=30, threads=1, **TINY_NEGATIVES
)


def test_a_resumed_run_takes_back_exactly_what_its_last_checkpoint_holds(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), num_rounds=5, patience=2, **SMALL)
    run = prepare_run(config)
    try:
        with torch.no_grad():
            for p in run.model.parameters():
                p.add_(0.5)
        state = run.state
        state.round = 3
        state.history = [
            {"round": r, "validated": True, "val": {"HR@10": v}} for r, v in ((1, 0.2), (2, 0.4), (3, 0.3))
        ]
        (
            state.early_stopping.update(1, 0.2),
            state.early_stopping.update(2, 0.4),
            state.early_stopping.update(3, 0.3),
        )
        run.training.precision.scale = 1024.0
        saved = checkpoint_state(run)
        save_checkpoint(run.checkpoints / "last.pt", saved)
        weights = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    finally:
        run.close()
    assert saved["model_args"]["model"] == "fedsasrec" and saved["round"] == 3

    resumed = prepare_run(TrainConfig(**{**config.to_dict(), "patience": 1}), resume=True)
    try:
        assert all(torch.equal(p, weights[n]) for n, p in resumed.model.named_parameters())
        assert resumed.state.round == 3 and resumed.state.history == state.history
        assert resumed.training.precision.scale == 1024.0
        # the new patience judges the saved validations afresh: one without gain since round 2
        assert resumed.state.early_stopping.best_round == 2 and resumed.state.stopped_early
        lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]  # rewritten from the checkpoint
    finally:
        resumed.close()


def test_a_resumed_run_cannot_have_fewer_rounds_than_it_trained(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), num_rounds=5, **SMALL)
    run = prepare_run(config)
    try:
        run.state.round = 4
        save_checkpoint(run.checkpoints / "last.pt", checkpoint_state(run))
    finally:
        run.close()
    with pytest.raises(InputError, match="--num-rounds 3: .* has already trained 4 rounds"):
        prepare_run(TrainConfig(**{**config.to_dict(), "num_rounds": 3}), resume=True)
