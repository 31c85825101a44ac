"""End-to-end runs on a tiny dataset: outputs, determinism, resume, evaluate, init-from."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL

from feddmmr.best_model import evaluate_run
from feddmmr.checkpoint import load_checkpoint
from feddmmr.config import TrainConfig
from feddmmr.config_files import resolve_config, saved_config
from feddmmr.errors import InputError
from feddmmr.train import train

TINY = dict(
    **TINY_MODEL,
    client_fraction=0.5,
    learning_rate=5e-3,
    dropout=0.1,
)


def config(tiny_data, run_dir, **overrides):
    return TrainConfig(data_dir=str(tiny_data), run_dir=str(run_dir), **{**TINY, **overrides})


def test_run_writes_its_documented_outputs(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path / "run", num_rounds=4, validate_every=2))
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["num_rounds"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert [r["validated"] for r in records] == [False, True, False, True]
    assert "val" not in records[0] and records[0]["next_validation"] == 2  # skipped, not copied
    for r in records:
        assert {"round", "validated", "train_loss", "train_seconds", "eval_seconds"} <= set(r)
    assert set(records[1]["val"]) >= {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}
    with np.load(run / "candidates.npz") as c:
        assert c["valid"].shape == c["test"].shape == (60, 21)
        assert len(c["users"]) == 60
    final = json.loads((run / "final.json").read_text())
    assert final["best_round"] in (2, 4) and 0 <= final["test"]["HR@10"] <= 1
    assert final == result.final
    assert (run / "checkpoints" / "best.pt").exists() and (run / "checkpoints" / "last.pt").exists()


def test_federated_training_learns_the_planted_structure(tiny_data, tmp_path):
    result = train(
        config(
            tiny_data,
            tmp_path / "run",
            num_rounds=12,
            validate_every=1,
            client_fraction=1.0,
            num_negatives_eval=50,
            learning_rate=1e-2,
        )
    )
    hr = [r["val"]["HR@10"] for r in result.history]
    chance = 10 / 51
    assert hr[-1] > hr[0] + 0.1
    assert max(hr) > chance + 0.05
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_numbers(tiny_data, tmp_path):
    a = train(config(tiny_data, tmp_path / "a", num_rounds=3, validate_every=1))
    b = train(config(tiny_data, tmp_path / "b", num_rounds=3, validate_every=1))
    assert [r["val"] for r in a.history] == [r["val"] for r in b.history]
    assert a.final["test"] == b.final["test"]
    c = train(config(tiny_data, tmp_path / "c", num_rounds=3, validate_every=1, seed=1))
    assert [r["train_loss"] for r in c.history] != [r["train_loss"] for r in a.history]


def test_evaluate_reproduces_final_json(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path / "run", num_rounds=2))
    again = evaluate_run(tmp_path / "run")
    assert again["test"] == result.final["test"] and again["best_round"] == result.final["best_round"]


def test_resume_after_kill_matches_an_uninterrupted_run(tiny_data, tmp_path):
    # Enough rounds that the kill, within 50 ms of the second metrics line, comes before the last;
    # one thread in both processes, since the thread count changes the float sums.
    settings = dict(num_rounds=12, validate_every=1, patience=0, threads=1)
    reference = train(config(tiny_data, tmp_path / "reference", **settings))

    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "feddmmr", "train", "--data-dir", str(tiny_data), "--run-dir", str(run_dir)]
    for key, value in {**TINY, **settings}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 12, "the run should have been killed mid-way"

    resumed = train(resolve_config(run_dir / "config.json"), resume=True)
    assert resumed.final["test"] == reference.final["test"]
    assert resumed.final["best_round"] == reference.final["best_round"]
    assert [r["val"] for r in resumed.history] == [r["val"] for r in reference.history]
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["round"] for r in lines] == list(range(1, 13))


def test_resuming_an_early_stopped_run_with_patience_0_continues_it_as_if_it_never_stopped(
    tiny_data, tmp_path
):
    settings = dict(num_rounds=8, validate_every=1)
    reference = train(config(tiny_data, tmp_path / "reference", patience=0, **settings))
    stopped = train(config(tiny_data, tmp_path / "stopped", patience=1, **settings))
    assert stopped.final["stopped_early"] and stopped.final["rounds_run"] < 8
    # Resumed with the patience it stopped under, it stays stopped: nothing more is trained.
    again = train(saved_config(tmp_path / "stopped"), resume=True)
    assert again.final == stopped.final
    resumed = train(saved_config(tmp_path / "stopped", patience=0), resume=True)
    assert not resumed.final["stopped_early"] and resumed.final["rounds_run"] == 8
    assert [r["val"] for r in resumed.history] == [r["val"] for r in reference.history]
    assert resumed.final["best_round"] == reference.final["best_round"]
    assert resumed.final["test"] == reference.final["test"]
    assert json.loads((tmp_path / "stopped" / "config.json").read_text())["patience"] == 0


def test_a_finished_run_resumed_with_more_rounds_trains_on_as_a_longer_run(tiny_data, tmp_path):
    settings = dict(validate_every=1, patience=0)
    reference = train(config(tiny_data, tmp_path / "reference", num_rounds=5, **settings))
    train(config(tiny_data, tmp_path / "short", num_rounds=3, **settings))
    extended = train(saved_config(tmp_path / "short", num_rounds=5), resume=True)
    assert extended.final["rounds_run"] == 5
    assert [r["val"] for r in extended.history] == [r["val"] for r in reference.history]
    assert extended.final["test"] == reference.final["test"]
    with pytest.raises(
        InputError, match="--num-rounds 4: .* has already trained 5 rounds; .*give at least 5"
    ):
        train(saved_config(tmp_path / "short", num_rounds=4), resume=True)


def test_a_second_run_into_the_same_directory_is_refused(tiny_data, tmp_path):
    train(config(tiny_data, tmp_path / "run", num_rounds=1))
    with pytest.raises(InputError, match="already holds a run; continue it with --resume"):
        train(config(tiny_data, tmp_path / "run", num_rounds=1))


def test_init_from_loads_every_tensor_and_rejects_other_shapes(tiny_data, tmp_path, caplog):
    first = train(config(tiny_data, tmp_path / "first", num_rounds=2))
    best = load_checkpoint(first.run_dir / "checkpoints" / "best.pt")["model"]
    with caplog.at_level("INFO"):
        # FedAvg of clients that hardly move: the server adopts the loaded weights as they were.
        second = train(
            config(
                tiny_data,
                tmp_path / "second",
                num_rounds=1,
                learning_rate=1e-12,
                server_optimizer="fedavg",
                init_from=str(first.run_dir / "checkpoints" / "best.pt"),
            )
        )
    assert f"loaded {len(best)} tensors" in caplog.text
    after = load_checkpoint(second.run_dir / "checkpoints" / "last.pt")["model"]
    for name in best:
        torch.testing.assert_close(after[name], best[name], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        train(config(tiny_data, tmp_path / "third", num_rounds=1, hidden_dim=8, init_from=str(first.run_dir)))


def test_centralized_baseline_trains_on_the_same_split(tiny_data, tmp_path):
    fed = train(config(tiny_data, tmp_path / "fed", num_rounds=1))
    central = train(config(tiny_data, tmp_path / "central", num_rounds=2, centralized=True))
    assert central.history[0]["clients"] == 60
    with np.load(fed.run_dir / "candidates.npz") as a, np.load(central.run_dir / "candidates.npz") as b:
        assert np.array_equal(a["test"], b["test"])  # the same protocol: same candidates for the same seed


def test_centralized_shared_negatives_are_drawn_per_batch_and_repeat_with_the_seed(tiny_data, tmp_path):
    options = dict(num_rounds=1, centralized=True, negatives="shared", num_negatives=32)
    first = train(config(tiny_data, tmp_path / "a", **options))
    again = train(config(tiny_data, tmp_path / "b", **options))
    other = train(config(tiny_data, tmp_path / "c", **{**options, "seed": 1}))
    assert first.history[0]["train_loss"] == again.history[0]["train_loss"] != other.history[0]["train_loss"]
    # 32 negatives and the target: an untrained model's softmax loss is about log(33)
    assert abs(first.history[0]["train_loss"] - np.log(33)) < 1.0


def test_the_sasrec_plus_preset_trains_newest_windows_and_keeps_the_round_of_best_ndcg(tiny_data, tmp_path):
    """The preset's recipe on the tiny data (its model shrunk): a full softmax over the users' newest
    windows, validated under full ranking, the best round the one of highest validation NDCG@10
    (the first of equals), and early stopping counts NDCG@10 too."""
    plus = resolve_config(
        "sasrec_plus",
        data_dir=str(tiny_data),
        run_dir=str(tmp_path / "run"),
        max_seq_len=10,
        hidden_dim=16,
        batch_size=8,
        num_rounds=6,
        patience=2,
        learning_rate=5e-2,
        threads=1,
        num_negatives_eval=20,
    )
    assert (plus.centralized, plus.loss, plus.train_windows, plus.select_metric, plus.eval) == (
        True,
        "ce-full",
        "last",
        "NDCG@10",
        "full",
    )
    result = train(plus)
    ndcg = [r["val"]["NDCG@10"] for r in result.history]
    assert result.final["best_round"] == 1 + int(np.argmax(ndcg)) and result.final["eval"] == "full"
    best = result.final["best_round"]
    assert len(ndcg) == 6 or (
        len(ndcg) == best + 2 and max(ndcg[best:]) <= ndcg[best - 1]
    )  # stopped on NDCG@10


@pytest.mark.parametrize("metric, best", [("HR@10", 2), ("NDCG@10", 3)])
def test_the_selection_metric_picks_the_best_round_and_stops(tiny_data, tmp_path, monkeypatch, metric, best):
    """Validation figures scripted so that HR@10 peaks at round 2 and NDCG@10 at round 3: the run
    keeps the round of its --select-metric and stops `patience` validations after it."""
    from feddmmr.run_state import Run

    scripted = {
        1: (0.1, 0.10),
        2: (0.4, 0.20),
        3: (0.3, 0.30),
        4: (0.2, 0.25),
        5: (0.2, 0.25),
        6: (0.2, 0.25),
    }
    monkeypatch.setattr(
        Run, "validate", lambda run, r: ({"HR@10": scripted[r][0], "NDCG@10": scripted[r][1]}, {})
    )
    result = train(
        config(tiny_data, tmp_path / metric, num_rounds=6, validate_every=1, patience=2, select_metric=metric)
    )
    assert result.final["best_round"] == best and result.history[-1]["round"] == best + 2
    from feddmmr.report import load_run  # an unfinished run's report marks the same round

    (tmp_path / metric / "final.json").unlink()
    assert load_run(tmp_path / metric).best_round == best


@pytest.mark.parametrize(
    "hr, warned",
    [
        ([0.60, 0.70, 0.75], None),
        ([0.60, 0.70, 0.20], "validation HR@10 collapsed after round 2: 0.7000 there, 0.2000 at round 3"),
        ([0.00, 0.01, 0.02], "no better than ranking at random (0.4762)"),
    ],
)
def test_a_run_says_loudly_when_validation_collapsed_or_never_beat_chance(
    tiny_data, tmp_path, monkeypatch, caplog, hr, warned
):
    """Scripted validation figures (1:20 candidates: chance is HR@10 10/21): a healthy run has no
    warnings; a collapse after the best round, or a best round at chance, is a warning in the log's
    last lines and in final.json."""
    from feddmmr.run_state import Run

    monkeypatch.setattr(Run, "validate", lambda run, r: ({"HR@10": hr[r - 1], "NDCG@10": hr[r - 1] / 2}, {}))
    with caplog.at_level("WARNING", logger="feddmmr"):
        result = train(config(tiny_data, tmp_path / "run", num_rounds=3, validate_every=1, patience=0))
    if warned is None:
        assert "warnings" not in result.final
        return
    (warning,) = result.final["warnings"]
    assert warned in warning and warning in caplog.text


def test_each_round_records_the_bytes_its_clients_receive_and_send(tiny_data, tmp_path):
    """Every sampled client receives the whole model (float32) and sends back what it trains: with
    stage 3 the frozen item table does not travel back."""
    result = train(config(tiny_data, tmp_path / "all", num_rounds=1))
    model = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["model"]
    total = sum(t.numel() * 4 for t in model.values())
    (record,) = result.history
    assert record["bytes_down"] == record["bytes_up"] == record["clients"] * total == 30 * total
    staged = train(
        config(tiny_data, tmp_path / "stage3", num_rounds=1, stage=3, init_from=str(result.run_dir))
    )
    (record,) = staged.history
    table = model["item_embedding.weight"].numel() * 4
    assert record["bytes_down"] == 30 * total and record["bytes_up"] == 30 * (total - table)


def test_a_run_from_python_can_show_the_command_lines_bars(tiny_data, tmp_path):
    """train(progress=True) draws the bars over rounds and clients (here into a terminal-like
    buffer) and still calls the caller's on_round."""
    import io

    from rich.console import Console

    from feddmmr.progress import round_bars

    seen = []
    train(
        config(tiny_data, tmp_path / "run", num_rounds=2),
        progress=True,
        on_round=lambda r: seen.append(r["round"]),
    )
    assert seen == [1, 2]
    screen = io.StringIO()
    with round_bars(2, Console(file=screen, force_terminal=True, width=100)) as (factory, on_round):
        factory(1, 30)(30)
        on_round({"round": 1})
    assert "rounds" in screen.getvalue() and "round 1 clients" in screen.getvalue()


def test_full_ranking_mode(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path / "run", num_rounds=2, eval="full"))
    assert result.final["eval"] == "full" and 0 <= result.final["test"]["HR@10"] <= 1
    # the second test, against the sampled candidates: the held-out item outranks more of them
    assert result.final["test_sampled"]["MRR"] >= result.final["test"]["MRR"]
    assert "test_full" not in result.final


@pytest.mark.parametrize("loss", ["ce", "ce-full", "gbce"])
def test_a_fedsgd_round_equals_a_centralized_full_batch_step(tiny_data, tmp_path, loss):
    """With every client, one local step each on all its windows and plain SGD, FedAvg weighted by
    training targets is exactly one full-batch gradient step on the pooled data: the whole
    federated pipeline (batches, engine, aggregation) must reproduce centralised training. (With
    ce-full both score every item.)"""
    same = dict(
        num_rounds=1,
        validate_every=1,
        dropout=0.0,
        local_optimizer="sgd",
        learning_rate=0.5,
        batch_size=10_000,
        local_epochs=1,
        server_optimizer="fedavg",
        loss=loss,
    )
    federated = train(config(tiny_data, tmp_path / "fed", client_fraction=1.0, **same))
    centralized = train(config(tiny_data, tmp_path / "central", centralized=True, **same))
    fed = load_checkpoint(federated.run_dir / "checkpoints" / "last.pt")["model"]
    central = load_checkpoint(centralized.run_dir / "checkpoints" / "last.pt")["model"]
    untrained = train(
        config(tiny_data, tmp_path / "still", client_fraction=1.0, **{**same, "learning_rate": 1e-12})
    )
    start = load_checkpoint(untrained.run_dir / "checkpoints" / "last.pt")["model"]
    assert not torch.allclose(
        fed["item_embedding.weight"], start["item_embedding.weight"]
    )  # the step moved it
    for name in fed:
        torch.testing.assert_close(fed[name], central[name], rtol=1e-4, atol=1e-6, msg=name)


class PoisoningEngine:
    """The sequential engine, with the updates of the first `poisoned` clients of every round
    made non-finite (or all of them): a planted fault that must never reach the global model."""

    def __init__(self, model, poisoned=None):
        from feddmmr.engines import SequentialEngine

        self.inner, self.poisoned = SequentialEngine(model), poisoned

    def train(self, context, global_params, clients, local, aggregate, progress=None):
        calls = []

        def poisoning(params, weights):
            calls.append(1)
            if self.poisoned is None or len(calls) <= self.poisoned:
                params = {name: torch.full_like(p, float("nan")) for name, p in params.items()}
            return aggregate(params, weights)

        return self.inner.train(context, global_params, clients, local, poisoning, progress)


def test_a_non_finite_client_update_is_dropped_counted_and_never_reaches_the_global_model(
    tiny_data, tmp_path, caplog
):
    import logging

    from feddmmr.train import prepare_run

    cfg = config(tiny_data, tmp_path / "run", num_rounds=2, validate_every=1, engine="sequential")
    model = prepare_run(config(tiny_data, tmp_path / "model")).model  # same seed: same initial model
    with caplog.at_level(logging.WARNING):
        train(cfg, engine=PoisoningEngine(model, poisoned=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["dropped_clients"] for r in records] == [2, 2]
    assert "round 1: dropped the updates of 2 clients" in caplog.text
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(np.isfinite(r["val"]["MRR"]) and r["val"]["MRR"] > 1 / 21 for r in records)  # a live model


def test_a_round_that_loses_every_client_stops_the_run_with_a_clear_error(tiny_data, tmp_path):
    from feddmmr.train import prepare_run

    cfg = config(tiny_data, tmp_path / "run", num_rounds=2, engine="sequential")
    model = prepare_run(config(tiny_data, tmp_path / "model")).model
    with pytest.raises(RuntimeError, match=r"round 1: every client's update \(\d+\) was non-finite"):
        train(cfg, engine=PoisoningEngine(model))


def test_a_checkpoint_reloads_its_model_without_the_data(tiny_data, tmp_path):
    from feddmmr.best_model import load_best_model, load_model

    train(config(tiny_data, tmp_path / "run", num_rounds=2, validate_every=1))
    model = load_model(tmp_path / "run")  # best.pt: nothing but the checkpoint is read
    best = load_best_model(tmp_path / "run")
    sequences = torch.tensor([[0, 0, 3, 7, 9, 2, 5, 8, 1, 4]])
    torch.testing.assert_close(model.score_all_last(sequences), best.model.eval().score_all_last(sequences))
    last = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last.config == model.config and not model.training

    stripped = {
        k: v
        for k, v in load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt").items()
        if k != "model_args"
    }
    torch.save(stripped, tmp_path / "old.pt")
    with pytest.raises(
        ValueError, match=r"old.pt: this checkpoint was saved before checkpoints carried the model's"
    ):
        load_model(tmp_path / "old.pt")
