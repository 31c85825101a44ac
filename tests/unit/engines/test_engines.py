"""The vectorised engine must reproduce the sequential reference engine (federated/*'s own tests sit
beside their modules in tests/unit/federated/)."""

import numpy as np
import pytest
import torch

from feddmmr.engines import make_engine
from feddmmr.engines.vectorized import plan_chunks
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import (
    BatchSettings,
    client_rng,
    make_client_batches,
    stack_batches,
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
