"""The two-tier memory on hand-made sequences and features whose outcome is computed by hand."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from feddmmr.memory import (
    MemoryConfig,
    MemoryState,
    empty_memory,
    retrieve,
    scatter,
    select,
    update_memory,
)


def angle_features(degrees: list[float]) -> torch.Tensor:
    """Unit 2-D features: item i (1-based) points at degrees[i-1]; row 0 is the padding."""
    radians = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    rows = torch.stack([radians.cos(), radians.sin()], dim=1).float()
    return torch.cat([torch.zeros(1, 2), rows])


def batch(*sequences: list[int]) -> torch.Tensor:
    """[C, T] positives from per-client sequences, right-padded with 0 (no positive)."""
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [0] * (width - len(s)) for s in sequences])


def long_term(state: MemoryState, client: int = 0) -> dict[str, list]:
    return {
        "items": state.long_items[client].tolist(),
        "frequency": state.long_frequency[client].tolist(),
        "refreshed": state.long_refreshed[client].tolist(),
    }


def with_long_term(
    config: MemoryConfig,
    dim: int,
    items: list[list[int]],
    frequency: list[list[int]],
    refreshed: list[list[int]],
    step: list[int],
    embeddings: torch.Tensor | None = None,
) -> MemoryState:
    """A state whose LT slots (and step counters) are set by hand; ST empty."""
    state = empty_memory(len(items), config, dim)
    state.long_items[:] = torch.tensor(items)
    state.long_frequency[:] = torch.tensor(frequency)
    state.long_refreshed[:] = torch.tensor(refreshed)
    state.step[:] = torch.tensor(step)
    if embeddings is not None:
        state.long_embeddings[:] = embeddings
    return state


def assert_states_equal(actual: MemoryState, expected: MemoryState) -> None:
    for name, tensor in expected.to_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(getattr(actual, name), tensor, rtol=0, atol=1e-5, msg=name)
        else:
            assert torch.equal(getattr(actual, name), tensor), name


# --- configuration ---------------------------------------------------------------------------


def test_default_config_has_twenty_retrieval_slots():
    assert MemoryConfig().retrieval_slots == 20


@pytest.mark.parametrize(
    "bad",
    [
        {"short_capacity": 0},
        {"long_capacity": 2.5},
        {"novelty_threshold": 2.5},
        {"merge_threshold": 1.5},
        {"ema": -0.1},
        {"age_scale": 0.0},
        {"retrieve_short": 51},
        {"retrieve_long": -1},
        {"retrieve_short": 0, "retrieve_long": 0},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="MemoryConfig"):
        MemoryConfig(**bad)


# --- writing: novelty gate, merge, eviction --------------------------------------------------


def test_novelty_gate_writes_only_items_far_enough_from_short_term():
    # After item 1 (0 deg, written: empty ST has novelty 1), item 2 at 65 deg has novelty
    # 1 - cos 65 = 0.577 < 0.583 (not written) and item 3 at 66 deg 0.593 (written, added).
    config = MemoryConfig(short_capacity=3, long_capacity=3, retrieve_short=1, retrieve_long=1)
    state = update_memory(
        empty_memory(2, config, 2), batch([1, 2], [1, 3]), angle_features([0, 65, 66]), config
    )
    assert state.long_items.tolist() == [[1, 0, 0], [1, 3, 0]]
    assert state.writes.tolist() == [1, 2] and state.positives.tolist() == [2, 2]


def test_merge_updates_frequency_refresh_step_and_ema_embedding():
    # ST holds only the last item. A (0 deg) and B (90 deg) are added at steps 0 and 1; C (-30 deg)
    # is novel against ST = [B] (cos -0.5) and has cos 0.866 >= 0.74 with A: it merges into A.
    config = MemoryConfig(short_capacity=1, long_capacity=3, retrieve_short=1, retrieve_long=1)
    state = update_memory(empty_memory(1, config, 2), batch([1, 2, 3]), angle_features([0, 90, -30]), config)
    assert long_term(state) == {"items": [1, 2, 0], "frequency": [2, 1, 0], "refreshed": [2, 1, 0]}
    expected = F.normalize(torch.tensor([0.9 + 0.1 * math.cos(math.radians(30)), -0.1 * 0.5]), dim=0)
    torch.testing.assert_close(state.long_embeddings[0, 0], expected)
    torch.testing.assert_close(state.long_embeddings[0, 1], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    assert (state.writes.item(), state.merges.item(), state.evictions.item(), state.step.item()) == (
        3,
        1,
        0,
        3,
    )
    assert state.short_items.tolist() == [[3]]


def test_merge_goes_into_the_most_similar_entry():
    # New item at 30 deg: cos 0.866 with the entry at 0 deg, 0.940 with the one at 50 deg.
    config = MemoryConfig(short_capacity=2, long_capacity=3, retrieve_short=1, retrieve_long=1)
    features = angle_features([0, 50, 30])
    state = with_long_term(
        config,
        2,
        [[1, 2, 0]],
        [[1, 1, 0]],
        [[0, 0, 0]],
        [4],
        embeddings=torch.cat([features[1:3], torch.zeros(1, 2)])[None],
    )
    state = update_memory(state, batch([3]), features, config)
    assert long_term(state) == {"items": [1, 2, 0], "frequency": [1, 2, 0], "refreshed": [0, 4, 0]}


def test_writes_reach_holes_and_entries_past_them_while_other_clients_write_nothing():
    # Client 0's LT has entries at slots 0 and 4 only; client 1's is empty and it writes nothing.
    # Item 3 (90 deg) is far from everything: added into slot 1, the first hole. Item 4 (260 deg)
    # is novel against ST = [3] (cos -0.98) and has cos 0.98 with item 2 (270 deg): it merges
    # into slot 4, past the holes.
    config = MemoryConfig(short_capacity=1, long_capacity=6, retrieve_short=1, retrieve_long=2)
    features = angle_features([0, 270, 90, 260])
    embeddings = torch.zeros(2, 6, 2)
    embeddings[0, 0], embeddings[0, 4] = features[1], features[2]
    state = with_long_term(
        config,
        2,
        [[1, 0, 0, 0, 2, 0], [0] * 6],
        [[1, 0, 0, 0, 1, 0], [0] * 6],
        [[0, 0, 0, 0, 1, 0], [0] * 6],
        [2, 0],
        embeddings=embeddings,
    )
    state = update_memory(state, batch([3, 4], []), features, config)
    assert long_term(state, 0) == {
        "items": [1, 3, 0, 0, 2, 0],
        "frequency": [1, 1, 0, 0, 2, 0],
        "refreshed": [0, 2, 0, 0, 3, 0],
    }
    torch.testing.assert_close(state.long_embeddings[0, 1], features[3])
    torch.testing.assert_close(
        state.long_embeddings[0, 4], F.normalize(0.9 * features[2] + 0.1 * features[4], dim=0)
    )
    assert (state.merges.tolist(), state.writes.tolist()) == ([1, 0], [2, 0])
    assert long_term(state, 1) == {"items": [0] * 6, "frequency": [0] * 6, "refreshed": [0] * 6}


EYE3 = torch.cat([torch.zeros(1, 3), torch.eye(3)])  # items 1, 2, 3 = the three unit axes


@pytest.mark.parametrize(
    "frequency, refreshed, age_scale, evicted",
    [
        ([1, 1], [0, 5], 200.0, 0),  # same frequency: the older entry goes (age effect)
        ([3, 1], [0, 5], 200.0, 1),  # log 4 + 2^-0.05 = 2.35 > log 2 + 2^-0.025 = 1.68
        ([2, 1], [0, 9], 1.0, 0),  # a short age scale: log 3 + 2^-10 = 1.10 < log 2 + 2^-1 = 1.19
        ([1, 1], [5, 5], 200.0, 0),  # a tie: the lowest slot index
    ],
)
def test_eviction_removes_the_lowest_utility_entry(frequency, refreshed, age_scale, evicted):
    config = MemoryConfig(
        short_capacity=2, long_capacity=2, age_scale=age_scale, retrieve_short=1, retrieve_long=1
    )
    state = with_long_term(config, 3, [[1, 2]], [frequency], [refreshed], [10], embeddings=EYE3[1:3][None])
    state = update_memory(state, batch([3]), EYE3, config)  # item 3 is orthogonal: added
    items, new_frequency, new_refreshed = [1, 2], list(frequency), list(refreshed)
    items[evicted], new_frequency[evicted], new_refreshed[evicted] = 3, 1, 10
    assert long_term(state) == {"items": items, "frequency": new_frequency, "refreshed": new_refreshed}
    assert torch.equal(state.long_embeddings[0, evicted], EYE3[3])
    assert state.evictions.item() == 1 and state.merges.item() == 0


def test_items_without_a_feature_enter_short_term_but_never_long_term():
    config = MemoryConfig(short_capacity=3, long_capacity=3, retrieve_short=1, retrieve_long=1)
    features = torch.cat([EYE3, torch.zeros(1, 3)])  # item 4 has no feature
    state = update_memory(empty_memory(1, config, 3), batch([4, 1]), features, config)
    assert state.long_items.tolist() == [[1, 0, 0]] and state.short_items.tolist() == [[0, 4, 1]]


# --- short-term FIFO and zero positives ------------------------------------------------------


def test_short_term_is_a_fifo_in_time_order_across_calls():
    config = MemoryConfig(short_capacity=3, long_capacity=3, retrieve_short=1, retrieve_long=1)
    no_writes = torch.zeros(7, 1)  # no item has a feature: none is written to long-term
    state = update_memory(empty_memory(2, config), batch([1, 2, 3, 4, 5], [1, 2]), no_writes, config)
    assert state.short_items.tolist() == [[3, 4, 5], [0, 1, 2]]
    state = update_memory(state, batch([6], [3]), no_writes, config)
    assert state.short_items.tolist() == [[4, 5, 6], [1, 2, 3]]
    assert state.step.tolist() == [6, 3] and state.long_items.count_nonzero() == 0


def test_zero_positives_change_nothing_and_gaps_are_skipped():
    config = MemoryConfig(short_capacity=3, long_capacity=3, retrieve_short=1, retrieve_long=1)
    features = angle_features([0, 90, -30])
    start = update_memory(empty_memory(2, config, 2), batch([1], [2]), features, config)
    assert_states_equal(update_memory(start, torch.zeros(2, 4, dtype=torch.long), features, config), start)
    gaps = update_memory(start, torch.tensor([[0, 2, 0, 3], [0, 0, 0, 0]]), features, config)
    dense = update_memory(start, torch.tensor([[2, 3], [0, 0]]), features, config)
    assert_states_equal(gaps, dense)
    assert gaps.step.tolist() == [3, 1]


def test_update_is_pure():
    config = MemoryConfig(short_capacity=2, long_capacity=2, retrieve_short=1, retrieve_long=1)
    state = with_long_term(config, 3, [[1, 2]], [[1, 1]], [[0, 0]], [3], embeddings=EYE3[1:3][None])
    before, positives, features = state.clone(), batch([3, 1]), EYE3.clone()
    update_memory(state, positives, features, config)
    assert_states_equal(state, before)
    assert positives.tolist() == [[3, 1]] and torch.equal(features, EYE3)


# --- batched over clients, and against a plain per-client reference --------------------------


def clustered_features(num_items: int, dim: int, seed: int) -> torch.Tensor:
    """Unit features around a few directions, so that both merges and additions happen."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, dim, generator=generator)
    noise = 0.6 * torch.randn(num_items, dim, generator=generator)
    rows = centres[torch.randint(0, 4, (num_items,), generator=generator)] + noise
    return torch.cat([torch.zeros(1, dim), F.normalize(rows, dim=1)])


def reference_update(sequence: list[int], features: torch.Tensor, config: MemoryConfig) -> dict[str, list]:
    """One client's memory, one positive at a time, straight from the rules (float64)."""
    features = features.double()
    short: list[int] = []
    items, frequency, refreshed = (
        [0] * config.long_capacity,
        [0] * config.long_capacity,
        [0] * config.long_capacity,
    )
    embeddings = torch.zeros(config.long_capacity, features.shape[1], dtype=torch.float64)
    for now, item in enumerate(sequence):
        feature = features[item]
        novelty = 1 - max((float(feature @ features[s]) for s in short), default=0.0)
        if novelty >= config.novelty_threshold:
            occupied = [j for j in range(config.long_capacity) if items[j]]
            cosines = {j: float(embeddings[j] @ feature) for j in occupied}
            best = max(occupied, key=lambda j: (cosines[j], -j), default=None)
            if best is not None and cosines[best] >= config.merge_threshold:
                frequency[best] += 1
                refreshed[best] = now
                embeddings[best] = F.normalize(
                    config.ema * embeddings[best] + (1 - config.ema) * feature, dim=0
                )
            else:

                def value(j: int) -> tuple[float, int]:
                    age = now - refreshed[j]
                    return math.log1p(frequency[j]) + 2 ** (-age / config.age_scale), j

                slot = next((j for j in range(config.long_capacity) if not items[j]), None)
                slot = min(range(config.long_capacity), key=value) if slot is None else slot
                items[slot], frequency[slot], refreshed[slot], embeddings[slot] = item, 1, now, feature
        short = (short + [item])[-config.short_capacity :]
    return {
        "items": items,
        "frequency": frequency,
        "refreshed": refreshed,
        "embeddings": embeddings,
        "short": [0] * (config.short_capacity - len(short)) + short,
    }


def test_batched_update_matches_a_per_client_reference_across_blocks_and_calls():
    config = MemoryConfig(short_capacity=5, long_capacity=8, retrieve_short=2, retrieve_long=4)
    features = clustered_features(60, 6, seed=1)
    generator = torch.Generator().manual_seed(2)
    sequences = [torch.randint(1, 61, (n,), generator=generator).tolist() for n in (300, 170, 40)]
    positives = batch(*sequences)
    state = empty_memory(3, config, 6)
    for part in (positives[:, :140], positives[:, 140:]):  # > 128 positives: several blocks per call
        state = update_memory(state, part, features, config)
    assert state.merges.sum() > 0 and state.evictions.sum() > 0
    for client, sequence in enumerate(sequences):
        expected = reference_update(sequence, features, config)
        assert long_term(state, client) == {key: expected[key] for key in ("items", "frequency", "refreshed")}
        torch.testing.assert_close(
            state.long_embeddings[client].double(), expected["embeddings"], atol=1e-5, rtol=0
        )
        assert state.short_items[client].tolist() == expected["short"]


def test_a_client_gets_the_same_memory_alone_or_batched_with_others():
    config = MemoryConfig(short_capacity=4, long_capacity=6, retrieve_short=2, retrieve_long=3)
    features = clustered_features(40, 5, seed=3)
    generator = torch.Generator().manual_seed(4)
    positives = torch.randint(0, 41, (3, 50), generator=generator)
    alone = update_memory(empty_memory(1, config, 5), positives[:1], features, config)
    together = update_memory(empty_memory(3, config, 5), positives, features, config)
    assert_states_equal(select(together, torch.tensor([0])), alone)


# --- retrieval -------------------------------------------------------------------------------


def test_retrieve_returns_recent_short_term_then_long_term_by_utility():
    config = MemoryConfig(short_capacity=4, long_capacity=4, retrieve_short=2, retrieve_long=4)
    state = with_long_term(
        config,
        1,
        items=[[10, 11, 0, 12], [0, 20, 21, 0], [30, 31, 0, 0]],
        frequency=[[2, 1, 0, 5], [0, 1, 1, 0], [1, 1, 0, 0]],
        refreshed=[[0, 0, 0, 0], [0, 2, 8, 0], [3, 3, 0, 0]],
        step=[10, 10, 10],
    )
    state.short_items[:] = torch.tensor([[0, 7, 8, 9], [0, 0, 0, 9], [0, 0, 0, 0]])
    items, mask = retrieve(state, config)
    # Client 0: utility by frequency; client 1: equal frequency, the fresher first;
    # client 2: a tie, slot order.
    assert items.tolist() == [[8, 9, 12, 10, 11, 0], [0, 9, 21, 20, 0, 0], [0, 0, 30, 31, 0, 0]]
    assert torch.equal(mask, items != 0)


def test_retrieve_from_empty_memories_is_fully_masked():
    config = MemoryConfig()
    items, mask = retrieve(empty_memory(3, config), config)
    assert items.shape == (3, 20) and not mask.any() and not items.any()


# --- client chunks and checkpoints -----------------------------------------------------------


def filled_state(num_clients: int = 4) -> tuple[MemoryState, MemoryConfig]:
    config = MemoryConfig(short_capacity=4, long_capacity=6, retrieve_short=2, retrieve_long=3)
    positives = torch.randint(1, 41, (num_clients, 30), generator=torch.Generator().manual_seed(5))
    state = update_memory(
        empty_memory(num_clients, config, 5), positives, clustered_features(40, 5, 6), config
    )
    return state, config


def test_select_and_scatter_round_trip():
    state, config = filled_state()
    clients = torch.tensor([2, 0])
    chunk = select(state, clients)
    chunk.step += 100  # a copy: the full state is untouched until scattered
    assert state.step.tolist() == [30, 30, 30, 30]
    target = empty_memory(4, config, 5)
    scatter(target, clients, chunk)
    assert_states_equal(select(target, clients), chunk)
    assert_states_equal(select(target, torch.tensor([1, 3])), empty_memory(2, config, 5))


def test_to_dict_from_dict_survive_a_weights_only_checkpoint():
    state, _ = filled_state()
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    buffer.seek(0)
    assert_states_equal(MemoryState.from_dict(torch.load(buffer, weights_only=True)), state)
    with pytest.raises(ValueError, match="missing keys"):
        MemoryState.from_dict({k: v for k, v in state.to_dict().items() if k != "step"})


def test_bad_inputs_are_rejected_with_clear_errors():
    state, config = filled_state(2)
    with pytest.raises(ValueError, match="features must be"):
        update_memory(state, batch([1], [2]), None, config)
    with pytest.raises(ValueError, match="memory's width"):
        update_memory(state, batch([1], [2]), torch.zeros(41, 3), config)
    with pytest.raises(ValueError, match="capacities"):
        update_memory(state, batch([1], [2]), torch.zeros(41, state.dim), MemoryConfig())
