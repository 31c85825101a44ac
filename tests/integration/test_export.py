"""`feddmmr export`: the exported program, loaded with torch alone, scores as the run's best model,
and items.json turns its columns back into the data's item ids."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_golden import SMALL, synthetic_features  # noqa: E402

from feddmmr.best_model import load_best_model  # noqa: E402
from feddmmr.cli import app  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.train import train  # noqa: E402

runner = CliRunner()


def trained(folder: Path, **settings) -> Path:
    threads = torch.get_num_threads()
    try:
        train(TrainConfig(**{**SMALL, "num_rounds": 1, "run_dir": str(folder / "run"), **settings}))
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


@pytest.mark.parametrize("tower", [False, True])
def test_the_exported_program_scores_as_the_run_and_items_json_names_the_items(tmp_path, tower):
    """Both item towers: with the content tower (and new items held out of training) the stand-ins
    are baked into the program, which then needs no feature file."""
    settings = {}
    if tower:
        settings = dict(
            item_tower="content", cold_items=0.15, modality=[f"text={synthetic_features(tmp_path)}"]
        )
    run_dir = trained(tmp_path, **settings)
    result = runner.invoke(app, ["export", str(run_dir), "--output", str(tmp_path / "served")])
    assert result.exit_code == 0, result.output
    program = torch.export.load(tmp_path / "served" / "model.pt2").module()
    items = json.loads((tmp_path / "served" / "items.json").read_text())
    best = load_best_model(run_dir)
    inputs = best.test_set.inputs[:7]
    with torch.no_grad():
        expected = best.model.score_all_last(inputs)
    served = program(inputs)
    assert served.shape == expected.shape == (7, best.split.num_items + 1)
    torch.testing.assert_close(served, expected)
    assert items["max_seq_len"] == best.config.max_seq_len and items["item_ids"][0] is None
    assert items["item_ids"][1:] == [int(i) for i in best.item_ids[1:]]
    # The best item the program gives for one user's history is the one `recommend` gives.
    data = best.split.data
    user, sequence = data.user_ids[5], data.sequence(5)
    row = torch.zeros(1, items["max_seq_len"], dtype=torch.int64)
    tail = torch.from_numpy(sequence[-items["max_seq_len"] :])
    row[0, -len(tail) :] = tail
    scores = program(row)[0]
    scores[0] = -np.inf
    (top,) = best.recommend([user], k=1, exclude_seen=False)
    assert items["item_ids"][int(scores.argmax())] == top[0].item


def test_feddmmr_is_not_exported(tmp_path):
    run_dir = trained(tmp_path, model="feddmmr", modality=[f"text={synthetic_features(tmp_path)}"])
    result = runner.invoke(app, ["export", str(run_dir), "--output", str(tmp_path / "served")])
    assert result.exit_code == 2 and "export covers FedSASRec" in result.output
    assert not (tmp_path / "served").exists()


def test_a_checkpoint_alone_recommends_for_a_history_as_its_run_does(tmp_path):
    """best.pt carries the item vocabulary: `feddmmr.load(checkpoint)` needs no data."""
    import feddmmr

    run_dir = trained(tmp_path)
    run = feddmmr.load(run_dir)
    history = [run.item_ids[i] for i in run.split.data.sequence(2)[:6]]
    for checkpoint in ("best.pt", "last.pt"):
        alone = feddmmr.load(run_dir / "checkpoints" / checkpoint)
        assert list(alone.item_ids[1:]) == [int(i) for i in run.item_ids[1:]]
        if checkpoint == "best.pt":  # the same model: the same list
            expected = run.recommend(history=history, k=5)[0]
            got = alone.recommend(history=history, k=5)[0]
            assert [str(r.item) for r in got] == [str(r.item) for r in expected]
            np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], rtol=1e-6)
            scores = alone.score(history=history)  # every item's score: the list is its top 5 unseen
            torch.testing.assert_close(scores, run.score(history=history))
            scores[0, 0] = scores[0, torch.as_tensor(run.split.data.sequence(2)[:6])] = -np.inf
            assert [str(alone.item_ids[i]) for i in scores[0].topk(5).indices] == [str(r.item) for r in got]
            vectors = alone.item_vectors()
            assert vectors.shape == (len(run.item_ids), 16) and torch.equal(vectors, run.item_vectors())
    with pytest.raises(ValueError, match="a checkpoint alone holds no users; give a history"):
        alone.recommend([run.split.data.user_ids[0]])
    with pytest.raises(ValueError, match="not in the run's catalogue"):
        alone.recommend(history=["no-such-item"])
