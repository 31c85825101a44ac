"""User-level DP-FedAvg: clipping, the noisy fixed-denominator mean, Poisson sampling, accounting."""

import json
import math

import numpy as np
import pytest
import torch

from feddmmr.config import TrainConfig
from feddmmr.federated.privacy import DPFedAvg, clip_updates, noise_item_rows, poisson_sample, privacy_spent


def test_each_clients_update_is_clipped_over_all_its_tensors_and_weighs_one():
    global_params = {"a": torch.zeros(2), "b": torch.ones(1)}
    # client 0: update (3, 0 | 4) has norm 5 -> scaled by 1/5; client 1: norm 0.5 -> unchanged
    params = {"a": torch.tensor([[3.0, 0.0], [0.3, 0.0]]), "b": torch.tensor([[5.0], [1.4]])}
    clipped, weights = clip_updates(params, global_params, torch.tensor([100.0, 7.0]), clip_norm=1.0)
    torch.testing.assert_close(clipped["a"], torch.tensor([[0.6, 0.0], [0.3, 0.0]]))
    torch.testing.assert_close(clipped["b"], torch.tensor([[1.8], [1.4]]))
    torch.testing.assert_close(weights, torch.ones(2))
    same, same_weights = clip_updates(params, global_params, torch.tensor([100.0, 7.0]), clip_norm=None)
    assert same is params and same_weights.tolist() == [100.0, 7.0]


def test_dp_fedavg_sums_clipped_updates_over_the_expected_cohort():
    global_params = {"w": torch.tensor([1.0, 1.0])}
    aggregator = DPFedAvg(
        global_params,
        clip_norm=1.0,
        noise_multiplier=0.0,
        expected_clients=4.0,
        generator=torch.Generator().manual_seed(0),
    )
    aggregator.add({"w": torch.tensor([[1.5, 1.0], [1.0, 0.0]])}, torch.ones(2))  # updates (0.5, 0), (0, -1)
    torch.testing.assert_close(aggregator.result()["w"], torch.tensor([1.125, 0.75]))  # 1 + sum / 4


def test_dp_noise_has_the_calibrated_spread_and_repeats_with_the_seed():
    global_params = {"w": torch.zeros(200_000)}

    def noisy(seed):
        aggregator = DPFedAvg(
            global_params,
            clip_norm=0.5,
            noise_multiplier=2.0,
            expected_clients=10.0,
            generator=torch.Generator().manual_seed(seed),
        )
        aggregator.add({"w": torch.zeros(3, 200_000)}, torch.ones(3))
        return aggregator.result()["w"]

    first = noisy(1)
    assert float(first.std()) == pytest.approx(2.0 * 0.5 / 10.0, rel=0.01)  # z C / (q N)
    assert abs(float(first.mean())) < 1e-3
    assert torch.equal(first, noisy(1)) and not torch.equal(first, noisy(2))


def test_poisson_sampling_is_seeded_and_takes_each_client_at_the_rate():
    eligible = np.arange(10_000)
    first = poisson_sample(eligible, 0.2, seed=0, round_number=1)
    assert np.array_equal(first, poisson_sample(eligible, 0.2, seed=0, round_number=1))
    assert not np.array_equal(first, poisson_sample(eligible, 0.2, seed=0, round_number=2))
    assert abs(len(first) - 2000) < 4 * math.sqrt(10_000 * 0.2 * 0.8)
    assert np.all(np.diff(first) > 0)


def test_privacy_spent_grows_with_rounds_and_shrinks_with_noise():
    pytest.importorskip("opacus")
    assert privacy_spent(0.0, 0.2, 10, 1e-5) == math.inf
    assert privacy_spent(1.0, 0.2, 0, 1e-5) == 0.0
    ten, fifty = privacy_spent(1.0, 0.2, 10, 1e-5), privacy_spent(1.0, 0.2, 50, 1e-5)
    assert 0 < ten < fifty
    assert privacy_spent(2.0, 0.2, 50, 1e-5) < fifty
    assert privacy_spent(1.0, 0.05, 50, 1e-5) < fifty


def test_update_noise_covers_every_item_row_at_the_clients_own_scale():
    """Two clients: one moved rows 1 and 2 by 3 per coordinate (RMS 3), the other row 3 by 1.
    Every row but padding gets noise of std scale x RMS, drawn from the client's own stream."""
    table = "item_embedding.weight"
    start = {table: torch.zeros(2001, 8), "bias": torch.zeros(2)}
    moved = torch.zeros(2, 2001, 8)
    moved[0, 1:3] = 3.0
    moved[1, 3] = 1.0
    params = {table: moved, "bias": torch.ones(2, 2)}
    noisy = noise_item_rows(params, start, [7, 9], seed=0, round_number=4, scale=0.5)
    noise = noisy[table] - moved
    assert torch.equal(noise[:, 0], torch.zeros(2, 8))  # padding
    assert (noise[:, 1:] != 0).all()  # every other row moved
    assert float(noise[0, 1:].std()) == pytest.approx(0.5 * 3.0, rel=0.03)
    assert float(noise[1, 1:].std()) == pytest.approx(0.5 * 1.0, rel=0.03)
    assert torch.equal(noisy["bias"], params["bias"])  # only the item table
    again = noise_item_rows(
        {table: moved[1:], "bias": params["bias"][1:]}, start, [9], seed=0, round_number=4, scale=0.5
    )
    assert torch.equal(again[table][0], noisy[table][1])  # the client's stream, whatever else is in its chunk
    other_round = noise_item_rows(params, start, [7, 9], seed=0, round_number=5, scale=0.5)
    assert not torch.equal(other_round[table], noisy[table])
    assert noise_item_rows(params, start, [7, 9], seed=0, round_number=4, scale=0.0) is params


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dp_noise_multiplier=1.0), "dp_noise_multiplier needs dp_clip_norm"),
        (dict(dp_clip_norm=0.0), "dp_clip_norm: expected a number > 0"),
        (dict(dp_clip_norm=1.0, dp_noise_multiplier=-1.0), "dp_noise_multiplier: expected a number >= 0"),
        (dict(dp_clip_norm=1.0, dp_delta=1.0), r"dp_delta: expected a number in \(0, 1\)"),
        (dict(dp_clip_norm=1.0, centralized=True), "--centralized pools the users"),
        (dict(update_noise=1.0, dp_clip_norm=1.0), "DP's sensitivity bound does not hold for it"),
        (dict(update_noise=1.0, centralized=True), "--centralized has no client updates"),
        (dict(update_noise=-1.0), "update_noise: expected a number >= 0"),
    ],
)
def test_bad_privacy_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_a_dp_run_reports_its_privacy_budget_every_round(tmp_path, engine):
    pytest.importorskip("opacus")
    from feddmmr.train import train

    config = TrainConfig(
        num_rounds=2,
        validate_every=1,
        hidden_dim=16,
        num_blocks=1,
        num_heads=1,
        local_epochs=1,
        batch_size=8,
        dp_clip_norm=0.5,
        dp_noise_multiplier=1.0,
        engine=engine,
        run_dir=str(tmp_path / engine),
        threads=1,
    )
    result = train(config)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    epsilons = [r["dp"]["epsilon"] for r in records]
    assert epsilons == pytest.approx([privacy_spent(1.0, 0.2, r, 1e-5) for r in (1, 2)])
    # Poisson sampling: the cohort varies around 0.2 * 500 users
    assert all(60 <= r["clients"] <= 140 for r in records)


def test_a_resumed_dp_run_draws_the_same_clients_and_noise(tmp_path):
    pytest.importorskip("opacus")
    from feddmmr.checkpoint import load_checkpoint
    from feddmmr.train import train

    settings = dict(
        validate_every=1,
        hidden_dim=16,
        num_blocks=1,
        num_heads=1,
        local_epochs=1,
        batch_size=8,
        dp_clip_norm=0.5,
        dp_noise_multiplier=1.0,
        threads=1,
        patience=0,
    )
    reference = train(TrainConfig(num_rounds=2, run_dir=str(tmp_path / "reference"), **settings))
    train(TrainConfig(num_rounds=1, run_dir=str(tmp_path / "resumed"), **settings))
    resumed = train(TrainConfig(num_rounds=2, run_dir=str(tmp_path / "resumed"), **settings), resume=True)
    assert [r["clients"] for r in resumed.history] == [r["clients"] for r in reference.history]
    assert [r["dp"] for r in resumed.history] == [r["dp"] for r in reference.history]
    a = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
