import numpy as np
import pytest
from helpers import make_sequences, random_sequences

from feddmmr.data.negatives import draw_eval_candidates, load_candidates, sample_negatives, save_candidates
from feddmmr.data.split import last_items, leave_one_out


def test_leave_one_out_holds_out_the_last_two_items():
    split = leave_one_out(make_sequences([[1, 2, 3, 4, 5], [6, 7, 8]]))
    assert list(split.train_sequence(0)) == [1, 2, 3]
    assert list(split.train_sequence(1)) == [6]
    assert list(split.valid_items) == [4, 7]
    assert list(split.test_items) == [5, 8]
    assert list(split.num_train_targets) == [2, 0]


def test_leave_one_out_rejects_users_with_fewer_than_three_items():
    with pytest.raises(ValueError, match="at least 3 items.*user 101"):
        leave_one_out(make_sequences([[1, 2, 3], [4, 5]]))


def test_last_items_left_pads_and_truncates():
    offsets, items = np.array([0, 2, 7]), np.array([1, 2, 3, 4, 5, 6, 7])
    assert last_items(offsets, items, 4).tolist() == [[0, 0, 1, 2], [4, 5, 6, 7]]
    assert last_items(offsets, items, 4, extra=np.array([9, 8])).tolist() == [[0, 1, 2, 9], [5, 6, 7, 8]]


def test_eval_candidates_exclude_the_whole_history_and_are_fixed_by_the_seed():
    data = random_sequences(30, 300, 5, 150, seed=1)
    split = leave_one_out(data)
    valid, test = draw_eval_candidates(split, 100, seed=3)
    assert valid.shape == test.shape == (30, 101)
    assert (valid[:, 0] == split.valid_items).all() and (test[:, 0] == split.test_items).all()
    for u in range(30):
        history = set(data.sequence(u))
        for rows in (valid, test):
            negatives = rows[u, 1:]
            assert len(set(negatives)) == 100  # without replacement
            assert not history & set(negatives)
            assert negatives.min() >= 1 and negatives.max() <= 300
    again = draw_eval_candidates(split, 100, seed=3)
    assert np.array_equal(again[0], valid) and np.array_equal(again[1], test)
    other = draw_eval_candidates(split, 100, seed=4)
    assert not np.array_equal(other[0], valid)


def test_eval_candidates_are_uniform_over_allowed_items():
    # One user whose history is items 1..3 of 20: every other item should be drawn equally often.
    split = leave_one_out(make_sequences([[1, 2, 3]], num_items=20))
    counts = np.zeros(21)
    for seed in range(400):
        valid, _ = draw_eval_candidates(split, 5, seed=seed)
        np.add.at(counts, valid[0, 1:], 1)
    assert counts[:4].sum() == 0
    expected = 400 * 5 / 17
    assert np.all(np.abs(counts[4:] - expected) < 0.25 * expected)


def test_too_few_items_for_eval_negatives_is_a_clear_error():
    split = leave_one_out(make_sequences([[1, 2, 3, 4]], num_items=6))
    with pytest.raises(
        ValueError,
        match="--num-negatives-eval 5: user 100 has only 2 items outside their history; use at most 2",
    ):
        draw_eval_candidates(split, 5, seed=0)


def test_candidates_file_round_trip_uses_original_ids(tmp_path):
    data = random_sequences(10, 200, 5, 30)
    split = leave_one_out(data)
    valid, test = draw_eval_candidates(split, 20, seed=0)
    path = tmp_path / "candidates.npz"
    save_candidates(path, split, valid, test)
    with np.load(path) as saved:
        assert saved["valid"].shape == (10, 21)
        assert np.array_equal(saved["users"], data.user_ids)
        assert np.array_equal(saved["test"], test * 10)  # original id = 10 * dense id here
    loaded_valid, loaded_test = load_candidates(path, split)
    assert np.array_equal(loaded_valid, valid) and np.array_equal(loaded_test, test)


def test_sample_negatives_never_returns_history_or_padding():
    rng = np.random.default_rng(0)
    history = np.arange(1, 90)  # 89 of 100 items banned
    negatives = sample_negatives(history, 100, (500, 4), rng)
    assert negatives.shape == (500, 4)
    assert negatives.min() >= 90 and negatives.max() <= 100
    assert set(np.unique(negatives)) == set(range(90, 101))
