"""A new engine or aggregation rule is one class, registered by name, then usable from the config."""

import json

import pytest
import torch
from helpers import TINY_NEGATIVES

from feddmmr.checkpoint import load_checkpoint
from feddmmr.config import TrainConfig
from feddmmr.engines import ENGINES, register_engine
from feddmmr.federated.aggregation import AGGREGATORS, FedAvg, register_aggregator
from feddmmr.federated.local import ClientReport, RoundResult
from feddmmr.train import train

TINY = dict(
    max_seq_len=10,
    **TINY_NEGATIVES,
    hidden_dim=16,
    num_heads=2,
    num_blocks=1,
    num_negatives_eval=20,
    num_rounds=2,
    validate_every=1,
    threads=1,
    top_users=40,
)


class IdleClients:
    """A toy engine: every client sends back the global weights untouched; it notes the rounds."""

    rounds: list[int] = []

    def __init__(self, model):
        self.model = model

    def train(self, context, global_params, clients, local, aggregate, progress=None):
        IdleClients.rounds.append(context.round)
        stacked = {
            n: p.detach().unsqueeze(0).repeat(len(clients), *([1] * p.dim()))
            for n, p in global_params.items()
        }
        aggregate(stacked, torch.tensor([float(c.num_targets) for c in clients]))
        return RoundResult([ClientReport(c.user, 0.0, 0, 0) for c in clients])


class UniformMean(FedAvg):
    """A toy rule: the plain mean of the clients' parameters, every client weighing 1."""

    calls = 0

    def add(self, client_params, weights):
        UniformMean.calls += 1
        return super().add(client_params, torch.ones_like(weights))


@pytest.fixture
def registered():
    register_engine("idle", lambda model, **options: IdleClients(model))
    register_aggregator("uniform", lambda params, fraction: UniformMean(params))
    yield
    ENGINES.pop("idle")
    AGGREGATORS.pop("uniform")


def test_a_registered_engine_runs_from_the_config_and_is_told_each_round(registered, tmp_path):
    IdleClients.rounds = []
    run_dir = tmp_path / "run"
    train(TrainConfig(engine="idle", server_optimizer="fedavg", run_dir=str(run_dir), **TINY))
    assert IdleClients.rounds == [1, 2]
    from feddmmr.train import prepare_run

    start = prepare_run(TrainConfig(run_dir=str(tmp_path / "fresh"), **TINY)).model.state_dict()  # same seed
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    for name in start:  # idle clients, the mean adopted: no change but the float32 mean's rounding
        torch.testing.assert_close(last[name], start[name], rtol=0, atol=1e-6)


def test_a_registered_aggregator_runs_from_the_config(registered, tmp_path):
    UniformMean.calls = 0
    train(TrainConfig(aggregator="uniform", run_dir=str(tmp_path / "run"), **TINY))
    assert UniformMean.calls > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["val"]["HR@10"] > 0 for r in records)


def test_unknown_or_conflicting_names_are_refused_with_the_known_ones():
    with pytest.raises(
        ValueError, match=r"engine: expected one of vectorized, sequential, flower, got 'idle'"
    ):
        TrainConfig(engine="idle")
    with pytest.raises(
        ValueError, match=r"aggregator: expected one of fedavg, .*krum, row-bound, got 'geometric-median'"
    ):
        TrainConfig(aggregator="geometric-median")
    with pytest.raises(ValueError, match=r"dp_clip_norm aggregates with DP-FedAvg"):
        register_aggregator("uniform", lambda params, fraction: UniformMean(params))
        try:
            TrainConfig(aggregator="uniform", dp_clip_norm=1.0)
        finally:
            AGGREGATORS.pop("uniform")
    with pytest.raises(ValueError, match="'flower' names the Flower app"):
        register_engine("flower", lambda model, **options: IdleClients(model))


def test_a_callback_sees_every_round_after_its_checkpoint_and_metrics_line_are_written(tmp_path):
    seen = []

    class Tracker:
        def on_round_end(self, run, record):
            lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
            saved = load_checkpoint(run.checkpoints / "last.pt")["round"]
            seen.append((record["round"], saved, json.loads(lines[-1])["round"], run.state.round))

    train(TrainConfig(run_dir=str(tmp_path / "run"), **TINY), callbacks=[Tracker()])
    assert seen == [(1, 1, 1, 1), (2, 2, 2, 2)]


def test_a_callback_sees_each_round_start_and_can_stop_training_then_the_run_resumes(tmp_path):
    from feddmmr.callbacks import STOP, Callback

    events = []

    class StopAfterFirst(Callback):
        def on_round_start(self, run, round_number):
            events.append(("start", round_number, run.state.round))  # the run has not counted it yet

        def on_round_end(self, run, record):
            events.append(("end", record["round"]))
            return STOP if record["round"] == 1 else None

        def on_run_end(self, run, final):
            events.append(("final", final["rounds_run"]))

    config = TrainConfig(run_dir=str(tmp_path / "run"), **{**TINY, "num_rounds": 3, "validate_every": 1})
    result = train(config, callbacks=[StopAfterFirst()])
    assert events == [("start", 1, 0), ("end", 1), ("final", 1)]
    assert result.final["rounds_run"] == 1 and not result.final["stopped_early"] and "test" in result.final
    resumed = train(config, resume=True)  # stopped by a callback, not by early stopping: it goes on
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
