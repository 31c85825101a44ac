"""Non-finite losses are detected and skipped, never trained on; loss scaling follows GradScaler."""

import logging

import numpy as np
import pytest
import torch

from feddmmr.engines import LocalTraining, make_engine
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import ClientBatches
from feddmmr.federated.precision import Precision, resolve_amp
from feddmmr.model.sasrec import SASRec, SASRecConfig

POISON = 9  # an item whose embedding makes every score that touches it overflow


def client(user, items):
    """One step, one window of 4 positions; candidates never include the poison item unless given."""
    inputs = np.array([[[0] + items[:3]]])
    targets = np.array(items[1:4])
    negatives = np.array([[20, 21], [22, 23], [24, 25]])
    candidates = np.zeros((1, 1, 4, 3), dtype=np.int64)
    candidates[0, 0, 1:, 0] = targets
    candidates[0, 0, 1:, 1:] = negatives
    return ClientBatches(user=user, inputs=inputs, candidates=candidates, num_targets=3)


@pytest.mark.parametrize("engine_name", ["sequential", "vectorized"])
def test_a_client_with_a_non_finite_loss_is_skipped_and_logged(engine_name, caplog):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=30, max_seq_len=4, hidden_dim=8, num_heads=2, num_blocks=1, dropout=0.0))
    with torch.no_grad():
        model.item_embedding.weight[POISON] = 1e30
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    poisoned, healthy = client(0, [1, POISON, 2, 3]), client(1, [4, 5, 6, 7])
    aggregator = FedAvg(global_params)
    with caplog.at_level(logging.WARNING):
        reports = make_engine(engine_name, model).train(
            global_params, [poisoned, healthy], LocalTraining(1e-2, 0.0, "ce", Precision("off", "cpu")), aggregator.add)
    by_user = {r.user: r for r in reports}
    assert by_user[0].skipped_steps == 1 and by_user[0].steps == 0
    assert by_user[1].skipped_steps == 0 and by_user[1].steps == 1
    assert "client 0: skipped 1 steps" in caplog.text
    # The healthy client's update is finite and the poisoned client contributed the global weights.
    healthy_only = FedAvg(global_params)
    make_engine(engine_name, model).train(global_params, [healthy], LocalTraining(1e-2, 0.0, "ce", Precision("off", "cpu")), healthy_only.add)
    mixed = aggregator.result()
    for name, value in healthy_only.result().items():
        expected = (value.double() + global_params[name].double()) / 2
        torch.testing.assert_close(mixed[name].double(), expected, rtol=1e-5, atol=1e-6)


def test_loss_scale_halves_on_overflow_and_grows_after_good_steps():
    precision = Precision("fp16", "cuda", scale=1024.0, growth_interval=3)
    precision.update(found_non_finite=True)
    assert precision.scale == 512.0
    for _ in range(3):
        precision.update(found_non_finite=False)
    assert precision.scale == 1024.0
    off = Precision("off", "cpu")
    off.update(True)
    assert off.loss_scale() == 1.0


def test_amp_modes_resolve_per_device():
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("auto", torch.device("cuda")) == "fp16"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))


def test_bf16_autocast_trains_on_cpu():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=30, max_seq_len=4, hidden_dim=8, num_heads=2, num_blocks=1, dropout=0.0))
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    aggregator = FedAvg(global_params)
    reports = make_engine("vectorized", model).train(
        global_params, [client(0, [1, 2, 3, 4])], LocalTraining(1e-2, 0.0, "ce", Precision("bf16", "cpu")), aggregator.add)
    assert reports[0].steps == 1 and np.isfinite(reports[0].mean_loss)
    assert not torch.equal(aggregator.result()["item_embedding.weight"], global_params["item_embedding.weight"])
