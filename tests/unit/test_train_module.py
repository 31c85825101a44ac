"""train.py's pieces beside the loop: the guard on the global model, what a finished run warns of,
and the per-group log line (whole runs: tests/integration/test_train.py)."""

from types import SimpleNamespace

import pytest
import torch

from feddmmr.config import TrainConfig
from feddmmr.errors import TrainingDiverged
from feddmmr.run_state import RunState
from feddmmr.train import describe_groups, stop_if_not_finite, validation_warnings


def fake_run(history=(), eval="sampled", num_items=500, model=None):
    return SimpleNamespace(
        config=TrainConfig(eval=eval, num_negatives_eval=100),
        split=SimpleNamespace(num_items=num_items),
        state=RunState(history=list(history)),
        run_dir="RUN",
        model=model,
    )


def validated(round_number, hr, ndcg):
    return {"round": round_number, "validated": True, "val": {"HR@10": hr, "NDCG@10": ndcg}}


def test_a_healthy_run_has_no_warning():
    run = fake_run([validated(1, 0.3, 0.2), validated(2, 0.5, 0.3), validated(3, 0.45, 0.28)])
    assert validation_warnings(run, {"best_round": 2, "valid": {"HR@10": 0.5, "NDCG@10": 0.3}}) == []


def test_a_best_round_no_better_than_chance_is_named():
    run = fake_run([validated(1, 0.099, 0.04)])  # 1:100: chance is 10 / 101
    (warning,) = validation_warnings(run, {"best_round": 1, "valid": {"HR@10": 0.099, "NDCG@10": 0.04}})
    assert "no better than ranking at random (0.0990)" in warning
    full = fake_run([validated(1, 0.019, 0.01)], eval="full", num_items=500)  # chance 10 / 500
    (warning,) = validation_warnings(full, {"best_round": 1, "valid": {"HR@10": 0.019, "NDCG@10": 0.01}})
    assert "(0.0200)" in warning


def test_a_collapse_after_the_best_round_is_named_with_its_rounds():
    run = fake_run([validated(1, 0.5, 0.3), validated(2, 0.6, 0.35), validated(3, 0.2, 0.1)])
    (warning,) = validation_warnings(run, {"best_round": 2, "valid": {"HR@10": 0.6, "NDCG@10": 0.35}})
    assert "collapsed after round 2: 0.6000 there, 0.2000 at round 3" in warning


def test_the_guard_stops_a_non_finite_global_model_naming_its_tensors():
    model = torch.nn.Linear(2, 2)
    stop_if_not_finite(fake_run(model=model), 3)  # finite: nothing happens
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"round 3: .*NaN or inf in bias\); .* round 2 are intact"):
        stop_if_not_finite(fake_run(model=model), 3)


def test_the_groups_line_names_new_and_trained_items():
    line = describe_groups(
        {
            "warm": {"users": 861, "HR@10": 0.6, "NDCG@10": 0.4},
            "cold": {"users": 139, "HR@10": 0.28, "NDCG@10": 0.15},
        }
    )
    assert (
        line
        == "new (139 users) HR@10 0.2800 NDCG@10 0.1500 | trained (861 users) HR@10 0.6000 NDCG@10 0.4000"
    )
