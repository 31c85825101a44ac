"""The vectorised engine must reproduce the sequential reference engine."""

import numpy as np
import pytest
import torch

from feddmmr.engines import LocalTraining, make_engine
from feddmmr.federated.adam import BatchedAdam
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import BatchSettings, client_rng, make_client_batches, touched_items, training_windows
from feddmmr.federated.precision import Precision
from feddmmr.model.sasrec import SASRec, SASRecConfig


def model(dropout=0.0):
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items=300, max_seq_len=20, hidden_dim=32, num_blocks=2, num_heads=2, dropout=dropout))


def clients(num=9, epochs=2, batch_size=3):
    rng = np.random.default_rng(0)
    settings = BatchSettings(max_len=20, batch_size=batch_size, epochs=epochs, num_negatives=4, num_items=300)
    out = []
    for user in range(num):
        seq = rng.choice(np.arange(1, 301), size=int(rng.integers(3, 130)), replace=False)
        out.append(make_client_batches(user, seq, settings, client_rng(0, 1, user)))
    return out


def run(engine_name, m, batches, weight_decay=1e-4, **engine_options):
    global_params = {n: p.detach().clone() for n, p in m.named_parameters()}
    aggregator = FedAvg(global_params)
    engine = make_engine(engine_name, m, **engine_options)
    local = LocalTraining(1e-2, weight_decay, "ce", Precision("off", "cpu"))
    reports = engine.train(global_params, batches, local, aggregator.add)
    return global_params, aggregator.result(), sorted(reports, key=lambda r: r.user)


@pytest.mark.parametrize("chunking", [dict(chunk_clients=4, chunk_windows=12), dict(chunk_clients=64, chunk_windows=4096)])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])  # 0: compact item tables; > 0: full tables
def test_vectorized_round_equals_sequential_round(chunking, weight_decay):
    m = model()
    batches = clients()
    start, sequential, seq_reports = run("sequential", m, batches, weight_decay)
    _, vectorized, vec_reports = run("vectorized", m, batches, weight_decay, **chunking)
    for name in start:
        assert not torch.allclose(sequential[name], start[name]), name  # the round did change it
        torch.testing.assert_close(vectorized[name], sequential[name], rtol=1e-4, atol=2e-5, msg=name)
    assert [r.steps for r in vec_reports] == [r.steps for r in seq_reports]
    assert np.allclose([r.mean_loss for r in vec_reports], [r.mean_loss for r in seq_reports], rtol=1e-4)


def test_batched_adam_matches_torch_adam_per_client():
    torch.manual_seed(1)
    start = torch.randn(3, 5)
    grads = [torch.randn(3, 5) for _ in range(4)]
    active = [torch.tensor([True, True, True]), torch.tensor([True, False, True]),
              torch.tensor([False, False, True]), torch.tensor([True, True, True])]
    params = {"w": start.clone()}
    adam = BatchedAdam(params, lr=0.1, weight_decay=0.01)
    for g, a in zip(grads, active):
        adam.step({"w": g}, a)
    for client in range(3):
        w = torch.nn.Parameter(start[client].clone())
        reference = torch.optim.Adam([w], lr=0.1, weight_decay=0.01)
        for g, a in zip(grads, active):
            if a[client]:
                w.grad = g[client].clone()
                reference.step()
        torch.testing.assert_close(params["w"][client], w.detach())


def test_fedavg_weights_by_training_targets():
    global_params = {"w": torch.zeros(2)}
    aggregator = FedAvg(global_params)
    aggregator.add({"w": torch.tensor([[1.0, 1.0], [4.0, 0.0]])}, torch.tensor([1.0, 3.0]))
    aggregator.add({"w": torch.tensor([[0.0, 8.0]])}, torch.tensor([4.0]))
    assert torch.allclose(aggregator.result()["w"], torch.tensor([13 / 8, 33 / 8]))
    assert aggregator.num_clients == 3


def test_fedavg_without_clients_keeps_the_global_model():
    global_params = {"w": torch.ones(2)}
    assert torch.equal(FedAvg(global_params).result()["w"], torch.ones(2))


def test_compact_item_tables_hold_exactly_the_rows_a_client_reads():
    batch = clients(num=2)[0]
    rows, local_inputs, local_candidates = touched_items(batch)
    assert rows[0] == 0 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows[local_inputs], batch.inputs)
    assert np.array_equal(rows[local_candidates], batch.candidates)
    assert set(rows[1:]) == set(np.unique(np.concatenate([batch.inputs.ravel(), batch.candidates.ravel()]))) - {0}


def test_training_windows_cover_every_target_once():
    seq = np.arange(1, 13)  # 11 targets
    inputs, targets = training_windows(seq, 4)
    assert inputs.shape == (3, 4)
    assert targets.tolist() == [[0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_client_batches_are_deterministic_and_negatives_avoid_history():
    seq = np.random.default_rng(3).choice(np.arange(1, 301), size=100, replace=False)
    settings = BatchSettings(max_len=20, batch_size=2, epochs=3, num_negatives=4, num_items=300)
    a = make_client_batches(7, seq, settings, client_rng(5, 2, 7))
    b = make_client_batches(7, seq, settings, client_rng(5, 2, 7))
    assert np.array_equal(a.candidates, b.candidates) and np.array_equal(a.inputs, b.inputs)
    assert a.num_steps == 3 * 3  # 5 windows, 2 per step, 3 epochs
    targets = a.candidates[..., 0]
    assert sorted(targets[targets > 0].tolist()) == sorted(np.tile(seq[1:], 3).tolist())
    negatives = a.candidates[..., 1:][targets > 0]
    assert not np.isin(negatives, seq).any() and negatives.min() >= 1
    assert (a.candidates[targets == 0] == 0).all()
