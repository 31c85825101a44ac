"""federated/batches.py: each client's training windows, negatives and compact item rows."""

import dataclasses

import numpy as np
import pytest

from feddmmr.federated.batches import (
    BatchSettings,
    client_rng,
    make_client_batches,
    touched_items,
    training_windows,
)


def test_compact_item_tables_hold_exactly_the_rows_a_client_reads():
    seq = np.random.default_rng(0).choice(np.arange(1, 301), size=60, replace=False)
    settings = BatchSettings(max_len=20, batch_size=3, epochs=2, num_negatives=4, num_items=300)
    batch = make_client_batches(0, seq, settings, client_rng(0, 1, 0))
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
