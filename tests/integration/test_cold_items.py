"""New items end to end: a run with `--cold-items` reports its test by group, and FedDMMR's content
item tower scores items that no client trained on, including items added after training."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_golden import SMALL, synthetic_features  # noqa: E402

from feddmmr.best_model import evaluate_run, load_best_model, load_model  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.errors import InputError  # noqa: E402
from feddmmr.features.store import load_features, save_features  # noqa: E402
from feddmmr.train import train  # noqa: E402


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cold")
    features = synthetic_features(folder)
    config = TrainConfig(
        **{
            **SMALL,
            "num_rounds": 2,
            "cold_items": 0.15,
            "model": "feddmmr",
            "item_tower": "content",
            "modality": [f"text={features}"],
            "run_dir": str(folder / "run"),
        }
    )
    threads = torch.get_num_threads()
    try:
        train(config)
    finally:
        # A module fixture runs outside conftest's per-test guard: the run's one thread must not
        # leak into the tests after this module.
        torch.set_num_threads(threads)
    return folder / "run", features


def test_the_test_by_group_adds_up_to_the_total_under_both_protocols(tower_run):
    run_dir, _ = tower_run
    final = json.loads((run_dir / "final.json").read_text())
    for key in ("test", "test_full"):
        groups = final[f"{key}_groups"]
        assert groups["cold"]["users"] > 0 and groups["warm"]["users"] > 0
        users = groups["cold"]["users"] + groups["warm"]["users"]
        for metric, value in final[key].items():
            total = (
                groups["cold"]["users"] * groups["cold"][metric]
                + groups["warm"]["users"] * groups["warm"][metric]
            )
            assert total == pytest.approx(users * value), (key, metric)
    assert evaluate_run(run_dir)["test_groups"] == final["test_groups"]  # evaluate reproduces it
    log = (run_dir / "run.log").read_text()
    assert "new items: " in log and "test by test item: new (" in log
    from feddmmr.report import load_run
    from feddmmr.summary import final_table

    table = final_table([load_run(run_dir)]).splitlines()
    assert table[-3].startswith("by test item") and "new 1:N HR@10" in table[-2]
    users = f"{final['test_groups']['cold']['users']}/{final['test_groups']['warm']['users']}"
    assert table[-1].split()[1:4] == [
        users,
        f"{final['test_groups']['cold']['HR@10']:.4f}",
        f"{final['test_groups']['cold']['NDCG@10']:.4f}",
    ]


def test_the_trained_models_scores_ignore_the_id_rows_of_items_no_client_trained_on(tower_run):
    best = load_best_model(tower_run[0])
    untrained = torch.from_numpy(~best.split.trained_items())
    inputs, slots = best.test_set.inputs[:32], tuple(m[:32] for m in best.memory_slots)
    model = best.model.eval()
    with torch.no_grad():
        before = model.score_all_last(inputs, *slots)
        table = model.sasrec.item_embedding.weight
        table[untrained] = torch.randn(int(untrained.sum()), table.shape[1]) * 10
        after = model.score_all_last(inputs, *slots)
    assert best.split.cold.any() and torch.equal(before, after)


def test_an_item_added_after_training_scores_as_a_held_out_item_with_its_features(tower_run, tmp_path):
    run_dir, features = tower_run
    best = load_best_model(run_dir)
    cold = np.flatnonzero(best.split.cold)[0]
    ids, matrix = load_features(features)
    row = matrix[list(ids).index(best.item_ids[cold])]
    new_file = save_features(tmp_path / "new.npz", np.array([999_001]), row[None])
    grown = best.with_new_items([f"text={new_file}"])
    assert grown.item_ids[-1] == 999_001 and len(grown.item_ids) == len(best.item_ids) + 1
    inputs = best.test_set.inputs[:16]
    slots = tuple(m[:16] for m in best.memory_slots)
    with torch.no_grad():
        scores = grown.model.eval().score_all_last(inputs, *slots)
        before = best.model.eval().score_all_last(inputs, *slots)
    torch.testing.assert_close(scores[:, -1], scores[:, cold])  # the same features: the same scores
    torch.testing.assert_close(scores[:, :-1], before)  # and the catalogue's own scores unchanged


def test_an_id_only_model_cannot_take_new_items(tmp_path):
    features = synthetic_features(tmp_path)
    train(
        TrainConfig(
            **{
                **SMALL,
                "num_rounds": 1,
                "model": "feddmmr",
                "modality": [f"text={features}"],
                "run_dir": str(tmp_path / "run"),
            }
        )
    )
    ids, matrix = load_features(features)
    new_file = save_features(tmp_path / "new.npz", np.array([999_001]), matrix[:1])
    with pytest.raises(ValueError, match="--item-tower content"):
        load_best_model(tmp_path / "run").with_new_items([f"text={new_file}"])


def test_fedsasrec_with_the_tower_trains_as_without_it_and_scores_new_items_from_their_features(tmp_path):
    features = synthetic_features(tmp_path)
    runs = {}
    for tower in ("id", "content"):
        extra = {"item_tower": "content", "modality": [f"text={features}"]} if tower == "content" else {}
        runs[tower] = tmp_path / tower
        train(
            TrainConfig(
                **{**SMALL, "num_rounds": 2, "cold_items": 0.15, **extra, "run_dir": str(runs[tower])}
            )
        )
    with_tower = torch.load(runs["content"] / "checkpoints" / "last.pt")["model"]
    without = torch.load(runs["id"] / "checkpoints" / "last.pt")["model"]
    assert with_tower.keys() - without.keys() == {"item_tower.train_counts", "item_tower.feature_mean"}
    for name, tensor in without.items():  # the tower changes no step of training
        assert torch.equal(with_tower[name], tensor), name
    best = load_best_model(runs["content"])
    cold = np.flatnonzero(best.split.cold)
    with torch.no_grad():
        table = best.model.eval().item_embedding.weight
        before = best.model.score_all_last(best.test_set.inputs[:16])
        table[cold] = torch.randn(len(cold), table.shape[1]) * 10  # a new item's ID row is never read
        assert torch.equal(before, best.model.score_all_last(best.test_set.inputs[:16]))
    ids, matrix = load_features(
        features
    )  # an item added after training: as the new item of the same features
    row = matrix[list(ids).index(best.item_ids[cold[0]])]
    grown = best.with_new_items(
        [f"text={save_features(tmp_path / 'new.npz', np.array([999_001]), row[None])}"]
    )
    with torch.no_grad():
        scores = grown.model.eval().score_all_last(best.test_set.inputs[:16])
    torch.testing.assert_close(scores[:, -1], scores[:, cold[0]])
    torch.testing.assert_close(scores[:, :-1], before)
    with pytest.raises(ValueError, match="use load_best_model"):
        load_model(runs["content"])


def test_settings_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(
        InputError, match="item_tower=content builds item vectors from modality features: give them"
    ):
        TrainConfig(item_tower="content")
    with pytest.raises(InputError, match="modality is for model=feddmmr or item_tower=content"):
        TrainConfig(modality=["text=f.npz"])
    for field, value in (("cold_items", 0.1), ("item_tower", "content")):
        with pytest.raises(InputError, match=f"{field} is not supported with engine=flower yet"):
            TrainConfig(engine="flower", model="feddmmr", modality=["text=f.npz"], **{field: value})
    sequences = tmp_path / "sequences.txt"  # no timestamps: the time form cannot tell which items came last
    sequences.write_text(
        "".join(f"{u} " + " ".join(str(i) for i in range(1, 30)) + "\n" for u in range(1, 21))
    )
    config = TrainConfig(
        **{
            **SMALL,
            "cold_items": 0.1,
            "cold_items_by": "time",
            "data_dir": str(sequences),
            "run_dir": str(tmp_path / "run"),
        }
    )
    with pytest.raises(InputError, match="no timestamps"):
        train(config)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
