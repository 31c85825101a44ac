"""rounds.py: one federated round as values in, values out."""

import numpy as np
import pytest
import torch
from helpers import random_sequences

from feddmmr.config import TrainConfig
from feddmmr.data.split import leave_one_out
from feddmmr.engines import make_engine
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.local import LocalTraining, RoundResult
from feddmmr.federated.precision import Precision
from feddmmr.federated.privacy import DPFedAvg
from feddmmr.model.sasrec import SASRec, SASRecConfig
from feddmmr.rounds import FederatedRound

SMALL = dict(max_seq_len=8, hidden_dim=16, num_heads=2, num_blocks=1, negatives="per-target", num_negatives=4)


def small_round(frozen=frozenset(), plugins=(), **options):
    split = leave_one_out(random_sequences(12, 40, 6, 15))
    config = TrainConfig(client_fraction=0.5, seed=3, **SMALL, **options)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=40, max_seq_len=8, hidden_dim=16, num_heads=2, num_blocks=1))
    local = LocalTraining(0.5, 0.0, "ce", Precision("off", "cpu"), frozen=frozen)
    return FederatedRound(config, split, local, plugins=plugins), model


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_round_takes_values_and_gives_values_leaving_the_model_as_it_was():
    federated, model = small_round(frozen=frozenset({"final_norm.weight"}))
    before = params_of(model)
    engine = make_engine("sequential", model)
    outcome = federated.run(engine, params_of(model), 1)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model is untouched
    assert engine.model is not model  # the engine trains its own copy
    assert set(outcome.params) == set(before)
    assert not torch.equal(outcome.params["item_embedding.weight"], before["item_embedding.weight"])
    assert torch.equal(outcome.params["final_norm.weight"], before["final_norm.weight"])  # frozen
    assert outcome.metrics["round"] == 1 and outcome.metrics["clients"] == 6 == len(outcome.result.reports)
    again = federated.run(engine, params_of(model), 1)  # the same values in: the same values out
    assert all(torch.equal(again.params[n], p) for n, p in outcome.params.items())


def test_the_plan_samples_by_the_seed_and_builds_each_clients_batches():
    federated, _ = small_round()
    first, second = federated.plan(1), federated.plan(2)
    assert len(first.users) == 6 and np.array_equal(first.users, federated.plan(1).users)
    assert not np.array_equal(first.users, second.users)
    assert [b.user for b in first.batches] == first.users.tolist()
    assert first.context.round == 1 and first.context.seed == 3


def test_dp_takes_poisson_samples_and_its_own_aggregation_rule():
    federated, model = small_round(dp_clip_norm=1.0, dp_noise_multiplier=0.5)
    plan = federated.plan(1)
    assert isinstance(federated.aggregator(plan, params_of(model)), DPFedAvg)
    sizes = {len(federated.plan(r).users) for r in range(1, 30)}
    assert len(sizes) > 1  # each client independently: the cohort's size varies
    plain, _ = small_round()
    assert type(plain.aggregator(plan, params_of(model))) is FedAvg


class Recorder:
    """A plug-in that notes what the round shows it."""

    def __init__(self):
        self.calls, self.seen = [], 0

    def join(self, plan, add, global_params):
        self.calls.append(("join", plan.context.round))

        def watched(client_params, weights):
            self.seen += len(weights)
            return add(client_params, weights)

        return watched

    def finish(self, plan, engine, local, add, global_params):
        self.calls.append(("finish", plan.context.round))

    def metrics(self):
        return {"recorded_clients": self.seen}


def test_plugins_join_before_the_clients_train_see_their_updates_and_add_metrics():
    recorder = Recorder()
    federated, model = small_round(plugins=(recorder,))
    outcome = federated.run(make_engine("vectorized", model), params_of(model), 2)
    assert recorder.calls == [("join", 2), ("finish", 2)]
    assert outcome.metrics["recorded_clients"] == 6


class FiguresEngine:
    """An engine whose clients send the global model back, with figures of its own."""

    def train(self, context, global_params, clients, local, aggregate, progress=None):
        for _ in clients:
            aggregate({n: p.unsqueeze(0) for n, p in global_params.items()}, torch.ones(1))
        return RoundResult([], metrics={"node_seconds": 1.5})


def test_the_engines_own_figures_join_the_rounds_metrics():
    federated, model = small_round()
    with pytest.raises(Exception, match="no update arrived"):  # clients sampled, no report: lost
        federated.run(FiguresEngine(), params_of(model), 1)
    federated.check = lambda plan, result: None  # the figures alone
    outcome = federated.run(FiguresEngine(), params_of(model), 1)
    assert outcome.metrics["node_seconds"] == 1.5
