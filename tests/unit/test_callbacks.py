"""callbacks.py: early stopping as a callback, and the hooks' order in the run loop."""

from types import SimpleNamespace

from feddmmr.callbacks import STOP, Callback, StopEarly
from feddmmr.federated.schedule import EarlyStopping
from feddmmr.run_state import RunState
from feddmmr.train import notify


def fake_run(patience, metric="NDCG@10"):
    return SimpleNamespace(
        config=SimpleNamespace(select_metric=metric, patience=patience),
        state=RunState(early_stopping=EarlyStopping(patience=patience)),
    )


def validated(round_number, **val):
    return {"round": round_number, "validated": True, "val": val}


def test_early_stopping_stops_after_patience_validations_without_a_gain_of_the_selection_metric():
    run, stop = fake_run(patience=2), StopEarly()
    answers = [
        stop.on_round_end(run, validated(1, **{"NDCG@10": 0.10, "HR@10": 0.5})),
        stop.on_round_end(run, {"round": 2, "validated": False}),
        stop.on_round_end(run, validated(3, **{"NDCG@10": 0.09, "HR@10": 0.9})),  # HR@10 up: not the metric
        stop.on_round_end(run, validated(4, **{"NDCG@10": 0.10, "HR@10": 0.9})),  # equal: no gain
    ]
    assert answers == [None, None, None, STOP]
    assert run.state.stopped_early and run.state.early_stopping.best_round == 1


def test_early_stopping_with_patience_zero_never_stops():
    run, stop = fake_run(patience=0, metric="HR@10"), StopEarly()
    answers = [stop.on_round_end(run, validated(r, **{"HR@10": 1.0 / r})) for r in range(1, 6)]
    assert answers == [None] * 5 and not run.state.stopped_early


def test_notify_calls_each_callback_that_has_the_hook_in_order():
    calls = []

    class Full(Callback):
        def on_round_start(self, run, round_number):
            calls.append(("full", round_number))

    class EndOnly:  # a plain object: only the hooks it has
        def on_round_end(self, run, record):
            calls.append(("end", record))
            return STOP

    assert notify([Full(), EndOnly()], "on_round_start", None, 3) == [None]
    assert notify([Full(), EndOnly()], "on_round_end", None, "r") == [None, STOP]
    assert calls == [("full", 3), ("end", "r")]
