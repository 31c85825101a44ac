"""The validation schedule, early stopping, client sampling and checkpoint files, on their own."""

import numpy as np
import pytest
import torch

from feddmmr.checkpoint import load_checkpoint, save_checkpoint, write_json
from feddmmr.federated.sampling import sample_clients
from feddmmr.federated.schedule import EarlyStopping, ValidationSchedule


def test_the_dynamic_schedule_validates_like_the_seed():
    schedule = ValidationSchedule(num_rounds=50)
    validated = [r for r in range(1, 51) if schedule.validates(r)]
    assert validated[:4] == [5, 10, 15, 20] and validated[4:6] == [22, 24] and validated[-1] == 50
    assert len(validated) == 19  # the seed: 50 rounds -> 19 validations
    assert sum(ValidationSchedule(num_rounds=25).validates(r) for r in range(1, 26)) == 7
    assert schedule.next_validation(5) == 10 and schedule.next_validation(21) == 22


def test_a_fixed_period_and_the_last_round():
    schedule = ValidationSchedule(num_rounds=7, validate_every=3)
    assert [r for r in range(1, 8) if schedule.validates(r)] == [3, 6, 7]
    with pytest.raises(ValueError, match="validate_every must be >= 1, got 0"):
        ValidationSchedule(num_rounds=7, validate_every=0)


def test_early_stopping_counts_validations_without_gain():
    stopping = EarlyStopping(patience=2)
    assert stopping.update(5, 0.3) and stopping.best_round == 5
    assert not stopping.update(10, 0.3)  # equal is no gain
    assert not stopping.should_stop
    assert not stopping.update(15, 0.2)
    assert stopping.should_stop and stopping.best_round == 5
    never = EarlyStopping(patience=0)
    for r in range(10):
        never.update(r, 0.0)
    assert not never.should_stop


def test_client_sampling_is_a_sorted_sample_fixed_by_seed_and_round():
    eligible = np.arange(100, 200)
    a = sample_clients(eligible, 0.2, seed=3, round_number=4)
    assert len(a) == 20 and len(set(a)) == 20 and set(a) <= set(eligible) and list(a) == sorted(a)
    assert np.array_equal(a, sample_clients(eligible, 0.2, seed=3, round_number=4))
    assert not np.array_equal(a, sample_clients(eligible, 0.2, seed=3, round_number=5))
    assert len(sample_clients(eligible, 0.001, seed=3, round_number=4)) == 1  # at least one client
    with pytest.raises(ValueError, match=r"client_fraction must be in \(0, 1\], got 1.5"):
        sample_clients(eligible, 1.5, seed=3, round_number=4)


def test_checkpoints_round_trip_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"round": 3, "model": {"w": torch.arange(4.0)}})
    assert load_checkpoint(path)["round"] == 3

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"round": 4, "bad": Unpicklable()})
    assert load_checkpoint(path)["round"] == 3  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind
    write_json(tmp_path / "run" / "final.json", {"b": 1, "a": 2})
    assert (tmp_path / "run" / "final.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(FileNotFoundError, match="no checkpoints/best.pt in this run directory"):
        load_checkpoint(tmp_path / "run")
