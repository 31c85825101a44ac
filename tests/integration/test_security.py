"""Robust aggregation in training, the simulated attacks, and the leakage metric."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

from feddmmr.config import TrainConfig
from feddmmr.engines import make_engine
from feddmmr.federated.aggregation import AGGREGATORS, FedAvg, register_aggregator
from feddmmr.federated.attacks import ATTACKS, Attack, exposure_rate
from feddmmr.model.sasrec import ITEM_TABLE
from feddmmr.train import prepare_run, run_round, train

TINY = dict(
    **TINY_MODEL,
    client_fraction=0.5,
    learning_rate=5e-3,
)


def tiny(tiny_data, run_dir, **overrides) -> TrainConfig:
    return TrainConfig(data_dir=str(tiny_data), run_dir=str(run_dir), **{**TINY, **overrides})


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
@pytest.mark.parametrize("aggregator", ["norm-bound", "median", "trimmed-mean", "krum", "row-bound"])
def test_each_robust_rule_trains_on_each_engine_with_the_server_optimiser(
    tiny_data, tmp_path, engine, aggregator
):
    result = train(
        tiny(
            tiny_data, tmp_path / "run", num_rounds=2, validate_every=1, engine=engine, aggregator=aggregator
        )
    )
    assert result.final["test"]["HR@10"] > 0
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


class Recording(FedAvg):
    """FedAvg that keeps what each add() received."""

    received: list = []

    def add(self, client_params, weights):
        Recording.received.append(({n: t.clone() for n, t in client_params.items()}, weights.clone()))
        return super().add(client_params, weights)


@pytest.fixture
def recording():
    Recording.received = []
    register_aggregator("recording", lambda params, fraction: Recording(params))
    yield Recording
    AGGREGATORS.pop("recording")


def round_with(tiny_data, tmp_path, kind, fraction=0.1):
    run = prepare_run(
        tiny(
            tiny_data,
            tmp_path / kind,
            aggregator="recording",
            attack=kind,
            attack_fraction=fraction,
            attack_targets=3,
        )
    )
    engine = make_engine(
        "vectorized",
        run.model,
        chunk_clients=run.config.chunk_clients,
        chunk_windows=run.config.chunk_windows,
        num_negatives=run.config.num_negatives,
    )
    global_params = run.params()
    record = run_round(run, engine, 1)
    run.close()
    return run, global_params, record


def test_the_targets_are_cold_items_chosen_by_the_seed(tiny_data, tmp_path, recording):
    run, _, _ = round_with(tiny_data, tmp_path, "data-poisoning")
    counts = np.bincount(run.split.data.items, minlength=run.split.num_items + 1)[1:]
    read = np.flatnonzero(counts > 0) + 1
    coldest_fifth = set(read[np.argsort(counts[read - 1], kind="stable")[: len(read) // 5]].tolist())
    assert (
        set(run.training.attack.targets.tolist()) <= coldest_fifth and len(run.training.attack.targets) == 3
    )
    again = Attack.plan("data-poisoning", 0.1, 3, run.split, 10, seed=0)
    assert np.array_equal(again.targets, run.training.attack.targets)
    assert not np.array_equal(
        Attack.plan("data-poisoning", 0.1, 3, run.split, 10, seed=1).targets, run.training.attack.targets
    )


def test_data_poisoning_clients_train_their_made_up_sequences(tiny_data, tmp_path, recording):
    run, _, record = round_with(tiny_data, tmp_path, "data-poisoning")
    fakes = len(run.training.attack.fake_users)
    assert fakes == 6  # 10% of 60 users
    sampled = record["attack_clients"]
    assert sampled == 3  # at the genuine clients' rate (0.5)
    assert sum(len(w) for _, w in recording.received) == record["clients"] + sampled
    sequence = run.training.attack.sequences[int(run.training.attack.fake_users[0])]
    assert set(sequence[1::2].tolist()) <= set(
        run.training.attack.targets.tolist()
    )  # every other item a target


@pytest.mark.parametrize("kind", ["data-poisoning", "model-poisoning"])
def test_genuine_clients_train_as_in_a_round_without_the_attack(tiny_data, tmp_path, recording, kind):
    """The fake clients come after the genuine ones: the genuine updates the server receives are
    those of the same round without an attack."""
    run, _, record = round_with(tiny_data, tmp_path, kind)
    with_attack = list(recording.received)
    Recording.received = []
    plain = prepare_run(tiny(tiny_data, tmp_path / "plain", aggregator="recording"))
    run_round(plain, make_engine("vectorized", plain.model, num_negatives=plain.config.num_negatives), 1)
    plain.close()
    genuine = with_attack[: len(Recording.received)]
    assert sum(len(w) for _, w in with_attack[len(genuine) :]) == record["attack_clients"]
    for (params, weights), (expected, expected_weights) in zip(genuine, Recording.received, strict=True):
        assert torch.equal(weights, expected_weights)
        for name in expected:
            assert torch.equal(params[name], expected[name]), name


def test_model_poisoning_clients_send_crafted_updates_to_the_target_rows_only(tiny_data, tmp_path, recording):
    run, global_params, record = round_with(tiny_data, tmp_path, "model-poisoning")
    *genuine, (crafted, weights) = recording.received
    assert len(weights) == record["attack_clients"] == 3
    change = crafted[ITEM_TABLE] - global_params[ITEM_TABLE]
    moved_rows = torch.nonzero(change.abs().sum(-1)[0]).flatten().tolist()
    assert moved_rows == sorted(run.training.attack.targets.tolist())
    for name in global_params:
        if name != ITEM_TABLE:
            assert torch.equal(crafted[name][0], global_params[name])
    genuine_norms = torch.cat(
        [
            sum((p[n] - global_params[n]).reshape(len(w), -1).pow(2).sum(1) for n in global_params).sqrt()
            for p, w in genuine
        ]
    )
    assert float(change[0].norm()) == pytest.approx(
        float(genuine_norms.median()), rel=1e-4
    )  # passes a norm check
    assert float(weights[0]) == float(torch.cat([w for _, w in genuine]).median())


def test_boosted_model_poisoning_puts_the_whole_crafted_change_into_the_mean(tiny_data, tmp_path, recording):
    """Explicit boosting: the fakes' share of the weighted mean is the crafted change of a genuine
    norm, whole, in the direction of the unboosted attack."""
    run, global_params, _ = round_with(tiny_data, tmp_path, "boosted-model-poisoning")
    *genuine, (crafted, weights) = recording.received
    Recording.received = []
    round_with(tiny_data, tmp_path / "plain", "model-poisoning")
    unboosted = Recording.received[-1][0][ITEM_TABLE][0] - global_params[ITEM_TABLE]
    change = crafted[ITEM_TABLE] - global_params[ITEM_TABLE]
    total_weight = float(weights.sum() + sum(w.sum() for _, w in genuine))
    in_the_mean = (weights[:, None, None] * change).sum(0) / total_weight
    assert torch.allclose(in_the_mean, unboosted, rtol=1e-4, atol=1e-7)
    genuine_norms = torch.cat(
        [
            sum((p[n] - global_params[n]).reshape(len(w), -1).pow(2).sum(1) for n in global_params).sqrt()
            for p, w in genuine
        ]
    )
    assert float(in_the_mean.norm()) == pytest.approx(float(genuine_norms.median()), rel=1e-4)
    assert float(change[0].norm()) > 5 * float(genuine_norms.max())  # what a norm check sees


class RanksSevenFirstForEvenUsers(torch.nn.Module):
    """Scores item 7 highest when the user's newest input item is even, lowest otherwise (items
    1..N otherwise by id, highest id first)."""

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def score_all_last(self, inputs: torch.Tensor) -> torch.Tensor:
        scores = torch.arange(self.num_items + 1, dtype=torch.float32).repeat(len(inputs), 1)
        even = inputs[:, -1] % 2 == 0
        scores[:, 7] = torch.where(even, 1e6, -1e6)
        return scores


def test_exposure_rate_counts_users_whose_top_10_holds_a_target(tiny_data, tmp_path):
    run = prepare_run(tiny(tiny_data, tmp_path / "run"))
    run.close()
    test = run.evaluation.test_set
    model = RanksSevenFirstForEvenUsers(run.split.num_items)
    read_seven = np.array(
        [
            7 in test.seen_items[test.seen_offsets[u] : test.seen_offsets[u + 1]]
            for u in range(len(test.inputs))
        ]
    )
    even = (test.inputs[:, -1] % 2 == 0).numpy()
    assert exposure_rate(model, test, np.array([7])) == pytest.approx(float((even & ~read_seven).mean()))
    # Item N (highest score after 7) is in everyone's top 10 unless they read it; ten more targets fill it.
    top_items = np.arange(run.split.num_items - 9, run.split.num_items + 1)
    assert exposure_rate(model, test, top_items) == 1.0


def load_leakage_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "privacy_leakage.py"
    spec = importlib.util.spec_from_file_location("privacy_leakage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_leakage_metric_on_a_case_with_a_known_answer():
    leakage = load_leakage_benchmark()
    truth = np.array([True, True, False, False, False])
    assert (
        leakage.auc(np.array([0.9, 0.8, 0.1, 0.0, 0.0]), truth) == 1.0
    )  # every true item above every false one
    assert leakage.auc(np.array([0.0, 0.0, 0.5, 0.4, 0.3]), truth) == 0.0
    assert leakage.auc(np.zeros(5), truth) == 0.5  # all tied: a coin flip
    assert leakage.auc(np.array([0.9, 0.2, 0.5, 0.1, 0.0]), truth) == pytest.approx(5 / 6)  # 0.2 beats 2 of 3
    assert leakage.precision_at(np.array([0.9, 0.2, 0.5, 0.1, 0.0]), truth, 2) == 0.5
    norms = torch.tensor([[0.0, 0.9, 0.8, 0.0, 0.1, 0.0]])  # row 0 is padding
    assert leakage.attack(norms, [truth]) == {"AUC": 1.0, "P@10": 0.4, "R-prec": 1.0}


@pytest.mark.parametrize(
    "kind, message",
    [
        (dict(model="feddmmr", modality=["text=t.npz"]), "simulated for federated FedSASRec"),
        (dict(centralized=True), "simulated for federated FedSASRec"),
    ],
)
def test_attacks_outside_their_reach_are_refused(kind, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(attack="data-poisoning", **kind)


def test_the_config_offers_every_attack_there_is():
    from feddmmr.config import FIELDS

    assert tuple(FIELDS["attack"].metadata["rule"].options()) == ATTACKS


def test_an_attacked_run_says_whether_the_attack_worked(tiny_data, tmp_path):
    """final.json and the log give ER@10 of the run's targets on its best model: what
    benchmarks/attacks.py measures."""
    from feddmmr.best_model import load_best_model

    result = train(
        tiny(
            tiny_data,
            tmp_path / "run",
            num_rounds=2,
            validate_every=1,
            attack="data-poisoning",
            attack_fraction=0.1,
            attack_targets=3,
        )
    )
    attack = result.final["attack"]
    best = load_best_model(tmp_path / "run")
    dense = [list(best.item_ids).index(item) for item in attack["targets"]]
    assert attack["kind"] == "data-poisoning" and len(dense) == 3
    assert attack["ER@10"] == exposure_rate(best.model, best.test_set, np.array(dense))
    assert f"attack data-poisoning: ER@10 {attack['ER@10']:.4f}" in (tmp_path / "run" / "run.log").read_text()
    # ... and every validation, on the validation users, in metrics.jsonl and the round's line
    best_record = next(r for r in result.history if r["round"] == result.final["best_round"])
    assert best_record["val"]["ER@10"] == exposure_rate(best.model, best.valid_set, np.array(dense))
    assert all(0 <= r["val"]["ER@10"] <= 1 for r in result.history)
    assert f"ER@10 {result.history[0]['val']['ER@10']:.4f}" in (tmp_path / "run" / "run.log").read_text()
