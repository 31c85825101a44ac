"""The vectorised engine must reproduce the sequential reference engine."""

import dataclasses

import numpy as np
import pytest
import torch

from feddmmr.engines import make_engine
from feddmmr.engines.vectorized import plan_chunks
from feddmmr.federated.adam import BatchedAdam, BatchedSGD
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import (
    BatchSettings,
    client_rng,
    make_client_batches,
    stack_batches,
    touched_items,
    training_windows,
)
from feddmmr.federated.local import LocalTraining, RoundContext
from feddmmr.federated.postprocess import client_postprocessors
from feddmmr.federated.precision import Precision
from feddmmr.model.sasrec import SASRec, SASRecConfig

ROUND = RoundContext(round=1, seed=0)


def model(dropout=0.0):
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(num_items=300, max_seq_len=20, hidden_dim=32, num_blocks=2, num_heads=2, dropout=dropout)
    )


def clients(num=9, epochs=2, batch_size=3, negatives="per-target", num_negatives=4):
    rng = np.random.default_rng(0)
    settings = BatchSettings(
        max_len=20,
        batch_size=batch_size,
        epochs=epochs,
        num_negatives=num_negatives,
        num_items=300,
        negatives=negatives,
    )
    out = []
    for user in range(num):
        seq = rng.choice(np.arange(1, 301), size=int(rng.integers(3, 130)), replace=False)
        out.append(make_client_batches(user, seq, settings, client_rng(0, 1, user)))
    return out


def run(
    engine_name,
    m,
    batches,
    weight_decay=1e-4,
    optimizer="adam",
    clip_norm=None,
    loss="ce",
    gbce_beta=0.3,
    update_noise=0.0,
    **engine_options,
):
    global_params = {n: p.detach().clone() for n, p in m.named_parameters()}
    aggregator = FedAvg(global_params)
    engine = make_engine(engine_name, m, **engine_options)
    local = LocalTraining(
        1e-2 if optimizer == "adam" else 0.5,
        weight_decay,
        loss,
        Precision("off", "cpu"),
        optimizer=optimizer,
        gbce_beta=gbce_beta,  # beta: loss=gbce only
        postprocessors=client_postprocessors(clip_norm, update_noise),
    )
    reports = engine.train(ROUND, global_params, batches, local, aggregator.add).reports
    return global_params, aggregator.result(), sorted(reports, key=lambda r: r.user)


# The engine-equivalence grids: one or two cases of each in the fast suite (`-m "not slow"`), the
# rest marked slow (CI runs them all, and once more without AVX).
SLOW = pytest.mark.slow
SMALL_CHUNKS, ONE_CHUNK = dict(chunk_clients=4, chunk_windows=12), dict(chunk_clients=64, chunk_windows=4096)


@pytest.mark.parametrize(
    "chunking, weight_decay",  # weight decay 0: compact item tables; > 0: full tables
    [
        (SMALL_CHUNKS, 0.0),
        pytest.param(SMALL_CHUNKS, 1e-4, marks=SLOW),
        pytest.param(ONE_CHUNK, 0.0, marks=SLOW),
        (ONE_CHUNK, 1e-4),
    ],
)
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


@pytest.mark.parametrize(
    "negatives, loss, weight_decay",
    [
        ("shared", "ce", 0.0),
        pytest.param("shared", "ce", 1e-4, marks=SLOW),
        pytest.param("shared", "bpr", 0.0, marks=SLOW),
        pytest.param("shared", "bpr", 1e-4, marks=SLOW),
        pytest.param("all", "ce-full", 0.0, marks=SLOW),
        ("all", "ce-full", 1e-4),
        pytest.param("shared", "gbce", 0.0, marks=SLOW),
        pytest.param("shared", "gbce", 1e-4, marks=SLOW),
        pytest.param("per-target", "gbce", 0.0, marks=SLOW),
        pytest.param("per-target", "gbce", 1e-4, marks=SLOW),
    ],
)
def test_vectorized_round_with_shared_negatives_equals_sequential_round(negatives, loss, weight_decay):
    m = model()
    batches = clients(negatives=negatives, num_negatives=32)
    assert all(b.candidates.shape[-1] == (33 if negatives == "per-target" else 1) for b in batches)
    start, sequential, seq_reports = run("sequential", m, batches, weight_decay, loss=loss)
    _, vectorized, vec_reports = run(
        "vectorized", m, batches, weight_decay, loss=loss, chunk_clients=4, chunk_windows=12
    )
    for name in start:
        assert not torch.allclose(sequential[name], start[name]), name
        torch.testing.assert_close(vectorized[name], sequential[name], rtol=1e-4, atol=2e-5, msg=name)
    assert np.allclose([r.mean_loss for r in vec_reports], [r.mean_loss for r in seq_reports], rtol=1e-4)
    if loss == "ce-full":  # every item is a negative: every row of the item table moves
        moved = (sequential["item_embedding.weight"] != start["item_embedding.weight"]).any(-1)
        assert moved[1:].all() and not moved[0]


def sequential_equals_vectorized(m, batches, **options) -> tuple[dict, dict]:
    """(the start, the sequential engine's FedAvg) of a round both engines ran alike (chunked small)."""
    start, sequential, _ = run("sequential", m, batches, **options)
    _, vectorized, _ = run("vectorized", m, batches, chunk_clients=4, chunk_windows=12, **options)
    for name in start:
        torch.testing.assert_close(vectorized[name], sequential[name], rtol=1e-4, atol=2e-5, msg=name)
    return start, sequential


def test_vectorized_round_with_clipped_updates_equals_sequential_round():
    m = model()
    batches = clients()
    start, sequential = sequential_equals_vectorized(m, batches, weight_decay=0.0, clip_norm=0.05)
    _, unclipped, _ = run("sequential", m, batches, 0.0)
    # An unweighted mean of updates of norm <= 0.05 moves the model by at most 0.05.
    moved = torch.sqrt(sum((sequential[n] - start[n]).double().pow(2).sum() for n in start))
    unclipped_moved = torch.sqrt(sum((unclipped[n] - start[n]).double().pow(2).sum() for n in start))
    assert 0.0 < moved <= 0.05 + 1e-6 < unclipped_moved


def test_vectorized_round_with_update_noise_equals_sequential_round():
    """Each client's noise comes from its own stream: both engines send the same noisy updates."""
    m = model()
    batches = clients()
    start, sequential = sequential_equals_vectorized(m, batches, weight_decay=0.0, update_noise=1.0)
    _, quiet, _ = run("sequential", m, batches, 0.0)
    table = "item_embedding.weight"
    assert not torch.allclose(sequential[table], quiet[table])
    assert ((sequential[table] - start[table])[1:] != 0).all()  # every item row moved


def test_vectorized_round_with_client_sgd_equals_sequential_round():
    start, sequential = sequential_equals_vectorized(model(), clients(), weight_decay=0.0, optimizer="sgd")
    assert not torch.allclose(sequential["item_embedding.weight"], start["item_embedding.weight"])


@pytest.mark.parametrize(
    "batched, reference_class, fused",
    [
        (BatchedAdam, torch.optim.Adam, True),  # the CPU's fused kernel
        (BatchedAdam, torch.optim.Adam, False),  # element-wise, as on CUDA
        (BatchedSGD, torch.optim.SGD, None),
    ],
)
@pytest.mark.parametrize("client_minor", [False, True])
def test_batched_optimiser_matches_torch_per_client(batched, reference_class, fused, client_minor):
    """Each client's slice follows the torch optimiser through the steps it is active in; an
    inactive client's gradient may be non-finite (a skipped fp16 step) and must not leak in.
    `client_minor`: gradients laid out [5, 3] in memory, as vmap gives the item table's under
    ce-full (the fused kernel once read such a gradient's memory in the wrong order)."""
    torch.manual_seed(1)
    start = torch.randn(3, 5)
    grads = [torch.randn(5, 3).t() if client_minor else torch.randn(3, 5) for _ in range(4)]
    active = [
        torch.tensor([True, True, True]),
        torch.tensor([True, False, True]),
        torch.tensor([False, False, True]),
        torch.tensor([True, True, True]),
    ]
    for g, a in zip(grads, active):
        g[~a] = float("nan")
    params = {"w": start.clone()}
    optimiser = batched(params, lr=0.1, weight_decay=0.01)
    if fused is not None:
        if fused and not optimiser.fused:
            pytest.skip("torch's fused Adam runs on the CPU from torch 2.4")
        optimiser.fused = fused
    for g, a in zip(grads, active):
        optimiser.step({"w": g}, a)
    for client in range(3):
        w = torch.nn.Parameter(start[client].clone())
        reference = reference_class([w], lr=0.1, weight_decay=0.01)
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
    rows, (local_inputs, local_candidates) = touched_items(batch)
    assert rows[0] == 0 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows[local_inputs], batch.inputs)
    assert np.array_equal(rows[local_candidates], batch.candidates)
    assert set(rows[1:]) == set(
        np.unique(np.concatenate([batch.inputs.ravel(), batch.candidates.ravel()]))
    ) - {0}


def test_training_windows_cover_every_target_once():
    seq = np.arange(1, 13)  # 11 targets
    inputs, targets = training_windows(seq, 4)
    assert inputs.shape == (3, 4)
    assert targets.tolist() == [[0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_the_last_window_is_the_newest_max_len_targets_and_weighs_what_it_trains():
    """--train-windows last (SASRec+'s sampling): one window, the newest targets, whatever the
    history's length; its FedAvg weight counts those targets, not the whole history."""
    seq = np.arange(1, 13)  # 11 targets
    inputs, targets = training_windows(seq, 4, "last")
    assert inputs.tolist() == [[8, 9, 10, 11]] and targets.tolist() == [[9, 10, 11, 12]]
    inputs, targets = training_windows(np.arange(1, 4), 4, "last")  # shorter than a window: left-padded
    assert inputs.tolist() == [[0, 0, 1, 2]] and targets.tolist() == [[0, 0, 2, 3]]
    settings = BatchSettings(
        max_len=4, batch_size=3, epochs=2, num_negatives=2, num_items=300, windows="last"
    )
    batches = make_client_batches(0, seq, settings, client_rng(0, 1, 0))
    assert batches.num_steps == 2 and batches.num_targets == 4
    assert batches.candidates[..., 0].tolist() == [[[9, 10, 11, 12]]] * 2
    every = make_client_batches(0, seq, dataclasses.replace(settings, windows="all"), client_rng(0, 1, 0))
    assert every.num_targets == 11


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


def test_shared_negatives_are_distinct_per_step_and_avoid_history():
    seq = np.arange(1, 151)  # the user has read items 1..150 of 300
    settings = BatchSettings(
        max_len=20, batch_size=3, epochs=2, num_negatives=40, num_items=300, negatives="shared"
    )
    a = make_client_batches(0, seq, settings, client_rng(0, 1, 0))
    b = make_client_batches(0, seq, settings, client_rng(0, 1, 0))
    assert np.array_equal(a.shared, b.shared)  # a pure function of the client's stream
    assert a.shared.shape == (a.num_steps, 40) and a.candidates.shape[-1] == 1
    assert all(len(set(row)) == 40 for row in a.shared)
    assert a.shared.min() > 150 and a.shared.max() <= 300
    assert len(np.unique(a.shared)) > 40  # a fresh draw each step
    with pytest.raises(
        ValueError, match="--num-negatives 151 with --negatives shared: .* all but 150 .*use at most 150"
    ):
        make_client_batches(0, seq, dataclasses.replace(settings, num_negatives=151), client_rng(0, 1, 0))


# --- FedDMMR: memory slots as extra vmapped inputs, memory updates after every step, freezing ---


def feddmmr_model(**options):
    from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    text, image = torch.randn(301, 12, generator=g), torch.randn(301, 8, generator=g)
    text[0] = image[0] = 0
    image[250:] = 0  # items without an image
    features = {
        "text": torch.nn.functional.normalize(text, dim=-1),
        "image": torch.nn.functional.normalize(image, dim=-1),
    }
    available = {"text": torch.arange(301) > 0, "image": (torch.arange(301) > 0) & (torch.arange(301) < 250)}
    config = SASRecConfig(
        num_items=300, max_seq_len=20, hidden_dim=32, num_blocks=1, num_heads=2, dropout=0.0
    )
    trained = (torch.arange(301) > 0) & (torch.arange(301) < 280)  # items 280-300: no ID part (content tower)
    return FedDMMR(FedDMMRConfig(config, **options), features, available, trained)


def feddmmr_memories(m, num_users):
    from feddmmr.memory.clients import ClientMemories
    from feddmmr.memory.two_tier import MemoryConfig
    from feddmmr.model.item_tower import combined_features

    combined = combined_features([m.features_image, m.features_text])
    return ClientMemories.empty(num_users, MemoryConfig(long_capacity=20, retrieve_long=10), combined)


def run_feddmmr(engine_name, m, batches, memory, frozen=frozenset(), loss="ce", **engine_options):
    from feddmmr.model.losses import AuxiliaryWeights

    global_params = {n: p.detach().clone() for n, p in m.named_parameters()}
    aggregator = FedAvg(global_params)
    engine = make_engine(engine_name, m, **engine_options)
    local = LocalTraining(
        1e-2,
        1e-4,
        loss,
        Precision("off", "cpu"),
        memory=memory,
        auxiliary=AuxiliaryWeights(load_balance=0.01, alignment=0.1, contrastive=0.1),
        frozen=frozen,
        optimizer="adam",
    )
    reports = engine.train(ROUND, global_params, batches, local, aggregator.add).reports
    return global_params, aggregator.result(), sorted(reports, key=lambda r: r.user)


HOLDOUT_BACKBONE = {"content_history": 5, "holdout_content": True, "holdout_backbone": True}


@pytest.mark.parametrize(
    "options, negatives, loss",
    [
        ({}, "per-target", "ce"),
        pytest.param({"content_history": 5, "holdout_content": True}, "per-target", "ce", marks=SLOW),
        pytest.param(HOLDOUT_BACKBONE, "per-target", "ce", marks=SLOW),
        pytest.param({}, "shared", "ce", marks=SLOW),
        pytest.param(HOLDOUT_BACKBONE, "shared", "ce", marks=SLOW),
        pytest.param(HOLDOUT_BACKBONE, "all", "ce-full", marks=SLOW),
        pytest.param({"item_tower": "content"}, "per-target", "ce", marks=SLOW),
        ({"item_tower": "content", **HOLDOUT_BACKBONE}, "shared", "ce"),
    ],
)
def test_vectorized_feddmmr_round_equals_sequential_round(options, negatives, loss):
    m = feddmmr_model(**options)
    batches = clients(num=6, epochs=2, batch_size=3, negatives=negatives, num_negatives=16)
    memories = {name: feddmmr_memories(m, 6) for name in ("sequential", "vectorized")}
    start, sequential, seq_reports = run_feddmmr("sequential", m, batches, memories["sequential"], loss=loss)
    _, vectorized, vec_reports = run_feddmmr(
        "vectorized", m, batches, memories["vectorized"], loss=loss, chunk_clients=4, chunk_windows=12
    )
    for name in start:
        assert not torch.allclose(sequential[name], start[name]), name  # every parameter trains
        torch.testing.assert_close(vectorized[name], sequential[name], rtol=1e-4, atol=2e-5, msg=name)
    assert [r.steps for r in vec_reports] == [r.steps for r in seq_reports]
    assert np.allclose([r.mean_loss for r in vec_reports], [r.mean_loss for r in seq_reports], rtol=1e-4)
    seq_state, vec_state = memories["sequential"].state.to_dict(), memories["vectorized"].state.to_dict()
    assert int(seq_state["positives"].sum()) == 2 * sum(
        b.num_targets for b in batches
    )  # every positive, 2 epochs
    assert int(seq_state["writes"].sum()) > 0
    for name, tensor in seq_state.items():
        torch.testing.assert_close(vec_state[name], tensor, msg=name)


def test_memory_takes_each_steps_positives_in_time_order():
    from feddmmr.memory.two_tier import MemoryConfig, empty_memory, update_memory

    seq = np.arange(1, 62)  # 60 targets: 3 windows of 20
    settings = BatchSettings(max_len=20, batch_size=2, epochs=1, num_negatives=2, num_items=300)
    batch = make_client_batches(0, seq, settings, client_rng(0, 1, 0))
    ordered = batch.time_ordered_targets()
    assert ordered.shape == (2, 40)
    for step in range(2):
        real = ordered[step][ordered[step] > 0]
        assert np.all(np.diff(real) > 0)  # time order, whatever order the windows were drawn in
        assert sorted(real.tolist()) == sorted(
            batch.candidates[step, ..., 0][batch.candidates[step, ..., 0] > 0].tolist()
        )
    # The short-term FIFO ends with the step's most recent positive.
    config = MemoryConfig(short_capacity=5, long_capacity=5, retrieve_short=5, retrieve_long=0)
    no_features = torch.zeros(301, 1)  # no long-term writes: the short-term FIFO alone
    state = update_memory(empty_memory(1, config), torch.from_numpy(ordered[:1]), no_features, config)
    assert state.short_items[0].tolist() == sorted(ordered[0][ordered[0] > 0].tolist())[-5:]


@pytest.mark.parametrize("engine_name", ["sequential", "vectorized"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_frozen_parameters_stay_bit_identical_in_every_client(engine_name, stage):
    from feddmmr.federated.stages import frozen_parameters

    m = feddmmr_model(mixture=stage != 1)
    frozen = frozen_parameters(m, stage)
    assert frozen and len(frozen) < len(list(m.parameters()))
    batches = clients(num=4, epochs=1, batch_size=3)
    seen, changed = [], set()
    global_params = {n: p.detach().clone() for n, p in m.named_parameters()}

    def check(client_params, weights):  # called once per client (sequential) or chunk (vectorized)
        seen.append(set(client_params))
        changed.update(
            n for n, p in client_params.items() if not torch.equal(p, global_params[n].expand_as(p))
        )
        live = dict(m.named_parameters())
        assert all(torch.equal(live[n].detach(), global_params[n]) for n in frozen)
        return torch.ones(len(weights), dtype=torch.bool)  # every update kept

    from feddmmr.model.losses import AuxiliaryWeights

    local = LocalTraining(
        1e-2,
        1e-4,
        "ce",
        Precision("off", "cpu"),
        memory=feddmmr_memories(m, 4),
        auxiliary=AuxiliaryWeights(alignment=0.1),
        frozen=frozen,
        optimizer="adam",
    )
    make_engine(engine_name, m).train(ROUND, global_params, batches, local, check)
    assert seen and all(names.isdisjoint(frozen) for names in seen)  # frozen tensors are never aggregated
    assert changed == set(global_params) - frozen  # the others all train
    for name, p in m.named_parameters():  # the engine leaves the model as it was handed over
        assert torch.equal(p.detach(), global_params[name]) and p.requires_grad


def test_fedavgm_accumulates_the_average_change_and_keeps_its_buffer():
    from feddmmr.federated.aggregation import ServerMomentum

    server = ServerMomentum(lr=2.0, momentum=0.5)
    first = server.step({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, -2.0])})
    torch.testing.assert_close(first["w"], torch.tensor([2.0, -4.0]))  # buffer = delta, lr 2
    restored = ServerMomentum(lr=2.0, momentum=0.5)
    restored.load_state_dict(server.state_dict())
    target = {"w": torch.tensor([3.0, -4.0])}  # delta (1, 0): buffer 0.5 * (1, -2) + (1, 0)
    torch.testing.assert_close(server.step(first, target)["w"], torch.tensor([5.0, -6.0]))
    torch.testing.assert_close(restored.step(first, target)["w"], torch.tensor([5.0, -6.0]))
    plain = ServerMomentum(lr=1.0, momentum=0.0)  # momentum 0, lr 1: FedAvg adopts the average
    torch.testing.assert_close(plain.step({"w": torch.zeros(2)}, target)["w"], target["w"])


def test_fedadam_steps_along_the_average_and_keeps_its_moments():
    from feddmmr.federated.aggregation import ServerAdam

    server = ServerAdam(lr=0.1, betas=(0.5, 0.5), tau=0.0)
    new = server.step({"w": torch.zeros(2)}, {"w": torch.tensor([2.0, -0.5])})
    # m = 0.5 * delta, v = 0.5 * delta^2 -> step = lr * 0.5 d / (sqrt(0.5) |d|) = lr * sign(d) / sqrt(2)
    torch.testing.assert_close(new["w"], torch.tensor([0.1, -0.1]) / 2**0.5)
    restored = ServerAdam(lr=0.1, betas=(0.5, 0.5), tau=0.0)
    restored.load_state_dict(server.state_dict())
    again = {"w": torch.tensor([1.0, 1.0])}
    torch.testing.assert_close(restored.step(new, again)["w"], server.step(new, again)["w"])


def test_the_server_optimiser_follows_the_config():
    from feddmmr.config import TrainConfig
    from feddmmr.federated.aggregation import ServerAdam, ServerMomentum
    from feddmmr.run_setup import make_server_optimizer

    default = make_server_optimizer(TrainConfig())
    assert isinstance(default, ServerAdam) and (default.lr, default.tau) == (8e-3, 1e-6)
    tuned = make_server_optimizer(TrainConfig(server_learning_rate=0.5, server_epsilon=1e-3))
    assert (tuned.lr, tuned.tau) == (0.5, 1e-3)
    # epsilon keeps a change far below it from becoming a full step: 1e-9 moves by lr * ~1e-3
    tiny = tuned.step({"w": torch.zeros(1)}, {"w": torch.tensor([1e-9])})["w"]
    assert 0 < float(tiny) < 1e-6
    momentum = make_server_optimizer(TrainConfig(server_optimizer="fedavgm", server_momentum=0.5))
    assert isinstance(momentum, ServerMomentum) and momentum.momentum == 0.5
    assert make_server_optimizer(TrainConfig(server_optimizer="fedavg")) is None
    with pytest.raises(ValueError, match=r"server_epsilon: expected a number >= 0, got -1"):
        TrainConfig(server_epsilon=-1)
    with pytest.raises(ValueError, match=r"server_learning_rate: expected a number > 0, got 0.0"):
        TrainConfig(server_learning_rate=0)


def test_short_clients_share_a_chunk_and_its_common_padding_is_cut():
    """Sparse data: clients of one short window each. Chunks group them by length, a chunk's
    tensors are as long as its longest window, and cutting that padding changes no real score."""
    settings = BatchSettings(max_len=20, batch_size=2, epochs=1, num_negatives=4, num_items=300)
    lengths = [4, 15, 6, 12, 3, 9]  # items; targets one fewer
    batches = [
        make_client_batches(u, np.arange(1, n + 1) + 10 * u, settings, client_rng(0, 1, u))
        for u, n in enumerate(lengths)
    ]
    chunks = plan_chunks(batches, max_clients=2, max_windows=64)
    assert [[c.num_targets for c in chunk] for chunk in chunks] == [[14, 11], [8, 5], [3, 2]]
    stacked = [stack_batches(chunk, torch.device("cpu")) for chunk in chunks]
    assert [s.inputs.shape[-1] for s in stacked] == [14, 8, 3]
    assert [s.candidates.shape[-2] for s in stacked] == [14, 8, 3]
    for chunk, cut in zip(chunks, stacked):  # the real targets all stay
        assert sorted(cut.candidates[..., 0][cut.candidates[..., 0] > 0].tolist()) == sorted(
            np.concatenate([c.candidates[..., 0][c.candidates[..., 0] > 0] for c in chunk]).tolist()
        )
    m = model().eval()
    full = torch.from_numpy(batches[1].inputs[0])  # 15 items: 14 inputs left-padded to 20
    candidates = torch.from_numpy(batches[1].candidates[0])
    torch.testing.assert_close(m(full, candidates)[:, -14:], m(full[:, -14:], candidates[:, -14:]))
