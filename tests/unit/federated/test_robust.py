"""Robust aggregation rules on known inputs, with a planted outlier."""

import pytest
import torch

from feddmmr.config import TrainConfig
from feddmmr.federated.aggregation import AGGREGATORS, make_aggregator

GLOBAL = {"w": torch.zeros(3), "b": torch.zeros(1)}
# Four honest clients near +1 and one attacker far away. Changes (w, b) per client:
HONEST = torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.2, 0.8, 1.0, 1.1], [0.9, 1.1, 1.0, 0.9], [1.0, 1.0, 1.2, 1.0]]
)
ATTACKER = torch.tensor([[50.0, -50.0, 50.0, 50.0]])


def aggregate(
    name: str, rows: torch.Tensor, weights=None, chunks=2, fraction=0.2
) -> tuple[torch.Tensor, object]:
    rule = make_aggregator(name, GLOBAL, fraction)
    weights = torch.ones(len(rows)) if weights is None else weights
    for part in torch.arange(len(rows)).chunk(chunks):  # engines hand clients over in chunks
        rule.add({"w": rows[part, :3], "b": rows[part, 3:]}, weights[part])
    out = rule.result()
    return torch.cat([out["w"], out["b"]]), rule


def test_every_robust_rule_is_registered():
    assert {"fedavg", "norm-bound", "median", "trimmed-mean", "krum", "row-bound"} <= set(AGGREGATORS)


def test_fedavg_is_pulled_far_by_one_attacker():
    mean, _ = aggregate("fedavg", torch.cat([HONEST, ATTACKER]))
    assert mean[0] > 10  # (4 * ~1 + 50) / 5


def test_median_takes_the_middle_of_each_coordinate():
    median, _ = aggregate("median", torch.cat([HONEST, ATTACKER]))
    assert torch.allclose(median, torch.tensor([1.0, 1.0, 1.0, 1.0]))
    even, _ = aggregate("median", HONEST)  # the mean of the two middle values
    assert torch.allclose(even, torch.tensor([1.0, 1.0, 1.0, 1.0]))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    trimmed, _ = aggregate(
        "trimmed-mean", torch.cat([HONEST, ATTACKER]), fraction=0.2
    )  # 1 of 5 from each side
    # per coordinate, sorted, the lowest and highest dropped: w0 0.9 [1.0 1.0 1.2] 50, w1 -50 [0.8 1.0 1.0] 1.1,
    # w2 1.0 [1.0 1.0 1.2] 50, b 0.9 [1.0 1.0 1.1] 50
    expected = torch.tensor([1.0 + 1.0 + 1.2, 0.8 + 1.0 + 1.0, 1.0 + 1.0 + 1.2, 1.0 + 1.0 + 1.1]) / 3
    assert torch.allclose(trimmed, expected)


def test_krum_leaves_the_outlier_out_and_averages_the_rest_by_weight():
    rows = torch.cat([HONEST, ATTACKER])
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 10.0])
    combined, rule = aggregate("krum", rows, weights, fraction=0.2)  # f = 1: keeps 4
    assert sorted(rule.selected.tolist()) == [0, 1, 2, 3]
    expected = (weights[:4] @ HONEST) / weights[:4].sum()
    assert torch.allclose(combined, expected)


def test_norm_bound_shrinks_the_outlier_to_the_median_norm():
    rows = torch.cat([HONEST, ATTACKER])
    bounded, _ = aggregate("norm-bound", rows)
    norms = rows.norm(dim=1)
    bound = norms.median()
    scaled = rows * torch.clamp(bound / norms, max=1.0)[:, None]
    assert torch.allclose(bounded, scaled.mean(0))
    assert (ATTACKER[0] * bound / norms[-1]).norm() == pytest.approx(float(bound))
    assert bounded.abs().max() < 3  # the attacker moves the mean by at most one honest-sized step


def test_row_bound_cuts_each_item_row_to_the_median_largest_row_change():
    """Four honest clients move two item rows each; the attacker puts a large change on one row
    (its total norm is an honest one's): only that row is cut, to the median of the clients'
    largest row changes; other parameters pass as in FedAvg."""
    table = "item_embedding.weight"
    start = {table: torch.zeros(4, 2), "b": torch.zeros(1)}
    honest = [
        torch.tensor([[0, 0], [1.0, 0], [0, 1.0], [0, 0]]),
        torch.tensor([[0, 0], [0, 2.0], [1.0, 0], [0, 0]]),
        torch.tensor([[0, 0], [3.0, 0], [0, 1.0], [0, 0]]),
        torch.tensor([[0, 0], [1.0, 0], [0, 0], [0, 4.0]]),
    ]
    attacker = torch.tensor([[0, 0], [0, 0], [0, 0], [3.0, 4.0]])  # norm 5 on row 3
    changes = torch.stack([*honest, attacker])
    b = torch.tensor([[1.0], [1.0], [1.0], [1.0], [1.0]])
    rule = make_aggregator("row-bound", start, 0.1)
    rule.add({table: changes[:3], "b": b[:3]}, torch.ones(3))
    rule.add({table: changes[3:], "b": b[3:]}, torch.ones(2))
    out = rule.result()
    # largest row change per client: 1, 2, 3, 4, 5 -> bound 3; rows above it are scaled to norm 3
    expected = changes.clone()
    expected[3, 3] = torch.tensor([0, 3.0])
    expected[4, 3] = torch.tensor([3.0, 4.0]) * 3 / 5
    assert torch.allclose(out[table], expected.mean(0))
    assert torch.allclose(out["b"], torch.ones(1))
    fedavg = make_aggregator("fedavg", start)
    fedavg.add({table: changes, "b": b}, torch.ones(5))
    assert float(out[table][3].norm()) < float(fedavg.result()[table][3].norm())


def test_non_finite_updates_are_dropped_and_counted():
    rows = torch.cat([HONEST, torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])])
    for name in ("norm-bound", "median", "trimmed-mean", "krum"):
        combined, rule = aggregate(name, rows)
        assert rule.dropped == 1 and torch.isfinite(combined).all()


def test_no_client_leaves_the_model_as_it_was():
    rule = make_aggregator("median", GLOBAL, 0.1)
    assert all(torch.equal(rule.result()[k], GLOBAL[k]) for k in GLOBAL)


def test_combinations_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="needs each node's update, but with flower_secure_aggregation"):
        TrainConfig(engine="flower", flower_secure_aggregation=True, aggregator="median")
    with pytest.raises(ValueError, match="cannot be combined with aggregator='krum'"):
        TrainConfig(dp_clip_norm=1.0, aggregator="krum")
    with pytest.raises(ValueError, match=r"robust_fraction: expected a number in \[0, 0.5\)"):
        TrainConfig(robust_fraction=0.5)
