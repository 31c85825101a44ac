"""Non-finite values never reach the global model; fp16 loss scaling is per client (GradScaler's rule).

fp16 runs on CUDA only, but its arithmetic is reproduced here on the CPU (float16 autocast), and
the dead model seen on a GPU is reproduced by its cause: a skipped step that still moved the
weights (an SGD client's NaN gradient times a zero mask), then a NaN update aggregated.
"""

import logging

import numpy as np
import pytest
import torch

from feddmmr.engines import make_engine
from feddmmr.federated.adam import BatchedAdam, BatchedSGD
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import BatchSettings, ClientBatches, client_rng, make_client_batches
from feddmmr.federated.local import LocalTraining, RoundContext
from feddmmr.federated.precision import Precision, resolve_amp
from feddmmr.model.sasrec import SASRec, SASRecConfig

ROUND = RoundContext(round=1, seed=0)

POISON = 9  # an item whose embedding makes every score that touches it overflow
HUGE = 2.0**24  # a loss scale that overflows float16 in the tiny model's backward pass (2**16 does not)


def client(user, items):
    """One step, one window of 4 positions; candidates never include the poison item unless given."""
    inputs = np.array([[[0] + items[:3]]])
    targets = np.array(items[1:4])
    negatives = np.array([[20, 21], [22, 23], [24, 25]])
    candidates = np.zeros((1, 1, 4, 3), dtype=np.int64)
    candidates[0, 0, 1:, 0] = targets
    candidates[0, 0, 1:, 1:] = negatives
    return ClientBatches(user=user, inputs=inputs, candidates=candidates, num_targets=3)


def tiny_model(**overrides):
    torch.manual_seed(0)
    config = dict(num_items=30, max_seq_len=4, hidden_dim=8, num_heads=2, num_blocks=1, dropout=0.0)
    return SASRec(SASRecConfig(**{**config, **overrides}))


def all_finite(params):
    return all(bool(torch.isfinite(p).all()) for p in params.values())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("engine_name", ["sequential", "vectorized"])
def test_a_client_with_a_non_finite_loss_is_skipped_and_logged(engine_name, optimizer, caplog):
    model = tiny_model()
    with torch.no_grad():
        model.item_embedding.weight[POISON] = 1e30
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    poisoned, healthy = client(0, [1, POISON, 2, 3]), client(1, [4, 5, 6, 7])
    aggregator = FedAvg(global_params)

    def local():
        return LocalTraining(1e-2, 0.0, "ce", Precision("off", "cpu"), optimizer=optimizer)

    with caplog.at_level(logging.WARNING):
        reports = (
            make_engine(engine_name, model)
            .train(ROUND, global_params, [poisoned, healthy], local(), aggregator.add)
            .reports
        )
    by_user = {r.user: r for r in reports}
    assert by_user[0].skipped_steps == 1 and by_user[0].steps == 0
    assert by_user[1].skipped_steps == 0 and by_user[1].steps == 1
    from feddmmr.config import TrainConfig
    from feddmmr.rounds import check_skipped_steps

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_skipped_steps(reports, ROUND.round, TrainConfig(), "run")  # what the round logs of it
    assert "skipped 1 of 2 local steps (50.0%) in 1 of 2 clients" in caplog.text
    # The skipped client kept the global weights (a skipped step moves nothing, NaN included),
    # so the mean is half-way between them and the healthy client's.
    healthy_only = FedAvg(global_params)
    make_engine(engine_name, model).train(ROUND, global_params, [healthy], local(), healthy_only.add)
    mixed = aggregator.result()
    assert all_finite({n: p for n, p in mixed.items() if n != "item_embedding.weight"})
    for name, value in healthy_only.result().items():
        expected = (value.double() + global_params[name].double()) / 2
        torch.testing.assert_close(mixed[name].double(), expected, rtol=1e-5, atol=1e-6)


def test_a_non_finite_update_is_dropped_from_the_aggregate_and_counted():
    global_params = {"w": torch.zeros(3), "b": torch.zeros(2)}
    aggregator = FedAvg(global_params)
    clients = {
        "w": torch.tensor([[1.0, 1.0, 1.0], [float("nan"), 0.0, 0.0], [3.0, 3.0, 3.0]]),
        "b": torch.tensor([[1.0, 1.0], [0.0, 0.0], [float("inf"), 3.0]]),
    }
    kept = aggregator.add(clients, torch.tensor([1.0, 5.0, 2.0]))
    assert kept.tolist() == [True, False, False]
    aggregator.add(
        {"w": torch.tensor([[4.0, 4.0, 4.0]]), "b": torch.tensor([[4.0, 4.0]])}, torch.tensor([3.0])
    )
    result = aggregator.result()
    torch.testing.assert_close(result["w"], torch.full((3,), 13.0 / 4))  # (1*1 + 3*4) / 4
    torch.testing.assert_close(result["b"], torch.full((2,), 13.0 / 4))
    assert aggregator.dropped == 2 and aggregator.num_clients == 2


def test_fp16_clients_overflowing_at_a_huge_scale_skip_halve_on_their_own_and_keep_the_model_finite():
    """float16 autocast on the CPU, starting at a loss scale that overflows every backward pass:
    each client halves its own scale until its steps are finite, no NaN reaches its weights, and
    the run keeps the most cautious client's scale for the next round."""
    model = tiny_model(num_items=60, max_seq_len=10, hidden_dim=16)
    rng = np.random.default_rng(0)
    settings = BatchSettings(max_len=10, batch_size=2, epochs=8, num_negatives=3, num_items=60)
    batches = [
        make_client_batches(
            u,
            rng.choice(np.arange(1, 61), size=int(rng.integers(12, 40)), replace=False),
            settings,
            client_rng(0, 1, u),
        )
        for u in range(5)
    ]
    for engine_name in ("sequential", "vectorized"):
        precision = Precision("fp16", "cpu", scale=HUGE)
        global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
        aggregator = FedAvg(global_params)
        local = LocalTraining(0.5, 0.0, "ce", precision, optimizer="sgd")
        round_result = make_engine(engine_name, model).train(
            ROUND, global_params, batches, local, aggregator.add
        )
        reports = round_result.reports
        assert precision.scale == HUGE  # the engine leaves the run's state alone: the run settles it
        precision.settle(round_result.loss_scales)
        result = aggregator.result()
        assert all_finite(result) and aggregator.dropped == 0, engine_name
        assert all(r.skipped_steps > 0 and r.steps > 0 for r in reports), engine_name
        assert not torch.equal(result["item_embedding.weight"], global_params["item_embedding.weight"])
        assert precision.scale < HUGE and precision.good_steps >= 1, engine_name


def test_loss_scales_are_per_client_and_the_run_keeps_the_most_cautious():
    precision = Precision("fp16", "cuda", scale=1024.0, growth_interval=3)
    scales = precision.client_scales(3, torch.device("cpu"))
    overflow = torch.tensor([True, False, False])
    scales.update(overflow, ~overflow)
    assert scales.scale.tolist() == [512.0, 1024.0, 1024.0]
    for _ in range(2):
        scales.update(torch.zeros(3, dtype=torch.bool), torch.tensor([True, True, False]))
    assert scales.scale.tolist() == [512.0, 2048.0, 1024.0]  # client 1: its 3rd good step in a row
    assert precision.scale == 1024.0  # the run's state changes only when the round settles
    precision.settle([scales, precision.client_scales(1, torch.device("cpu"))])
    assert precision.scale == 512.0 and precision.good_steps == 0
    off = Precision("off", "cpu")
    off_scales = off.client_scales(2, torch.device("cpu"))
    off_scales.update(torch.tensor([True, False]), torch.tensor([False, True]))
    off.settle([off_scales])
    assert off.scale == 2.0**16  # untouched: no scaling without fp16


def test_amp_modes_resolve_per_device():
    # auto is float32 everywhere: on an H200, bf16 was no faster and fp16 no faster either.
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("auto", torch.device("cuda")) == "off"
    assert resolve_amp("fp16", torch.device("cuda")) == "fp16"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))


@pytest.mark.parametrize("mode", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_backward_stay_finite(mode):
    """float16/bfloat16 autocast on the CPU: fully padded rows, a full long history, and hidden
    states large enough that their scores overflow float16 (> 65504): every score, loss and
    gradient is finite."""
    from feddmmr.model.losses import next_item_loss

    model = tiny_model(num_items=50, max_seq_len=200, hidden_dim=16, num_blocks=2, dropout=0.1)
    model.train()
    with torch.no_grad():
        model.final_norm.weight.fill_(1e5)  # scores of about 1e5
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.integers(1, 51, size=(3, 200)))
    inputs[1] = 0  # a fully padded row
    inputs[2, :150] = 0
    candidates = torch.from_numpy(rng.integers(1, 51, size=(3, 200, 5)))
    candidates[1] = 0
    candidates[2, :150] = 0
    with torch.autocast("cpu", dtype=mode):
        scores = model(inputs, candidates)
    assert scores.abs().max() > 65504  # beyond float16's range
    total, count = next_item_loss(scores.float(), candidates[..., 0] > 0, "ce")
    loss = total / count
    loss.backward()
    assert torch.isfinite(scores).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_batched_optimiser_state_lives_on_the_parameters_device():
    """The 'meta' device stands in for CUDA: state made on the CPU, or read back to it, fails."""
    params = {"w": torch.zeros(3, 4, device="meta"), "b": torch.zeros(3, device="meta")}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    active = torch.ones(3, dtype=torch.bool, device="meta")
    adam = BatchedAdam(params, lr=0.1)
    assert adam.steps.device.type == "meta"
    assert all(t.device.type == "meta" for t in [*adam.exp_avg.values(), *adam.exp_avg_sq.values()])
    adam.step(grads, active)
    BatchedSGD(params, lr=0.1, weight_decay=0.1).step(grads, active)
    assert all(p.device.type == "meta" for p in params.values())


def test_bf16_autocast_trains_on_cpu():
    model = tiny_model()
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    aggregator = FedAvg(global_params)
    local = LocalTraining(1e-2, 0.0, "ce", Precision("bf16", "cpu"), optimizer="adam")
    reports = (
        make_engine("vectorized", model)
        .train(ROUND, global_params, [client(0, [1, 2, 3, 4])], local, aggregator.add)
        .reports
    )
    assert reports[0].steps == 1 and np.isfinite(reports[0].mean_loss)
    assert not torch.equal(
        aggregator.result()["item_embedding.weight"], global_params["item_embedding.weight"]
    )
