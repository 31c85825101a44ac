"""Recommendations from a trained run: each user's top k in the data's ids, from the CLI and
from Python, beside new items."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cold_items import tower_run  # noqa: E402,F401  (the module fixture: FedDMMR, tower, new items)

from feddmmr.best_model import load_best_model  # noqa: E402
from feddmmr.cli import app  # noqa: E402
from feddmmr.features.store import load_features, save_features  # noqa: E402


def scores_of(best, dense_sequence, user_row):
    """Every item's score after `dense_sequence`, by hand: what recommend must rank."""
    length = best.config.max_seq_len
    inputs = torch.zeros(1, length, dtype=torch.long)
    last = torch.from_numpy(dense_sequence[-length:])
    inputs[0, length - len(last) :] = last
    slots = tuple(m[user_row : user_row + 1] for m in best.memory_slots)
    with torch.no_grad():
        return best.model.eval().score_all_last(inputs, *slots)[0]


def test_a_users_list_is_their_best_unseen_items_in_the_datas_ids(tower_run):
    best = load_best_model(tower_run[0])
    data = best.split.data
    users = [data.user_ids[3], data.user_ids[7]]
    lists = best.recommend(users, k=5)
    assert [len(items) for items in lists] == [5, 5]
    for row, recs in zip((3, 7), lists):
        sequence = data.sequence(row)  # the whole known sequence is the input
        scores = scores_of(best, sequence, row)
        scores[0] = scores[torch.from_numpy(sequence)] = float("-inf")
        expected = torch.topk(scores, 5)
        assert [r.item for r in recs] == [data.item_ids[i] for i in expected.indices.tolist()]
        np.testing.assert_allclose([r.score for r in recs], expected.values.numpy(), rtol=1e-6)
        assert not {r.item for r in recs} & {data.item_ids[i] for i in sequence}


def test_seen_items_come_back_only_when_asked(tower_run):
    best = load_best_model(tower_run[0])
    data = best.split.data
    k = best.split.num_items  # every item: the seen ones must then appear
    unseen = best.recommend([data.user_ids[0]], k=k)[0]
    everything = best.recommend([data.user_ids[0]], k=k, exclude_seen=False)[0]
    seen = {data.item_ids[i] for i in data.sequence(0)}
    assert len(unseen) == best.split.num_items - len(seen) and not seen & {r.item for r in unseen}
    assert seen <= {r.item for r in everything} and len(everything) == best.split.num_items


def test_a_history_of_item_ids_is_a_new_users_input(tower_run):
    best = load_best_model(tower_run[0])
    items = [best.item_ids[i] for i in (5, 9, 2)]
    recs = best.recommend(history=items, k=3)[0]
    assert len(recs) == 3 and not {r.item for r in recs} & set(items)
    with pytest.raises(ValueError, match="item id.* 123456 are not in the run's catalogue"):
        best.recommend(history=[items[0], 123456])
    with pytest.raises(ValueError, match="user id.* 123456 are not among the run's"):
        best.recommend([123456])
    with pytest.raises(ValueError, match="not both"):
        best.recommend([best.split.data.user_ids[0]], history=items)


def test_an_item_added_after_training_is_ranked_beside_its_twin(tower_run, tmp_path):
    """A new item with the features of a new item of the run scores exactly as that item."""
    run_dir, features = tower_run
    best = load_best_model(run_dir)
    cold = np.flatnonzero(best.split.cold)
    ids, matrix = load_features(features)
    user = best.split.data.user_ids[0]
    top = best.recommend([user], k=best.split.num_items)[0]
    twin = next(r for r in top if r.item in {best.item_ids[i] for i in cold})  # the best-ranked new item
    row = matrix[list(ids).index(twin.item)]
    grown = best.with_new_items(
        [f"text={save_features(tmp_path / 'new.npz', np.array([999_001]), row[None])}"]
    )
    ranked = grown.recommend([user], k=best.split.num_items + 1)[0]
    scores = {r.item: r.score for r in ranked}
    assert scores[999_001] == pytest.approx(twin.score, rel=1e-6)


def test_the_cli_prints_each_users_list(tower_run):
    best = load_best_model(tower_run[0])
    users = [str(u) for u in best.split.data.user_ids[:2]]
    runner = CliRunner()
    result = runner.invoke(
        app, ["recommend", str(tower_run[0]), "--user", users[0], "--user", users[1], "-k", "3"]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "\t" in line]
    assert lines[0] == "user\trank\titem\tscore" and len(lines) == 7
    expected = best.recommend([users[0]], k=3)[0]
    assert [line.split("\t")[2] for line in lines[1:4]] == [str(r.item) for r in expected]
    result = runner.invoke(app, ["recommend", str(tower_run[0]), "--user", users[0], "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    assert [entry["item"] for entry in printed[users[0]]] == [r.item for r in expected[:2]]
    result = runner.invoke(app, ["recommend", str(tower_run[0])])
    assert result.exit_code == 2 and "give --user" in result.output


def test_each_user_gets_their_own_count_when_one_has_read_almost_everything():
    from feddmmr.recommend import top_items

    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0], [9.0, 4.0, 3.0, 2.0, 1.0]])
    lists = top_items(scores, [np.array([1, 2, 3]), np.array([], dtype=np.int64)], k=3)
    assert lists == [([4.0], [4]), ([4.0, 3.0, 2.0], [1, 2, 3])]  # never padding, never a read item
