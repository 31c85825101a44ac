"""FedDMMR runs end to end: CLI, memories in checkpoints and resume, staged training, presets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from typer.testing import CliRunner

from feddmmr.best_model import evaluate_run
from feddmmr.checkpoint import load_checkpoint
from feddmmr.cli import app
from feddmmr.config import TrainConfig
from feddmmr.config_files import resolve_config
from feddmmr.features.store import save_features
from feddmmr.train import train

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "feddmmr" / "presets"
TINY = dict(
    **TINY_MODEL,
    client_fraction=0.3,
    learning_rate=5e-3,
    dropout=0.1,
    threads=1,
)


@pytest.fixture(scope="module")
def text_file(tiny_data, tmp_path_factory):
    """Random 12-d features for the tiny dataset's items, 10 of them missing."""
    ids = sorted({int(x) for line in tiny_data.read_text().splitlines() for x in line.split()[1:]})
    path = tmp_path_factory.mktemp("features") / "text.npz"
    rng = np.random.default_rng(0)
    save_features(path, np.array(ids[10:]), rng.normal(size=(len(ids) - 10, 12)).astype(np.float32))
    return path


def config(tiny_data, run_dir, text_file, **overrides):
    return TrainConfig(
        data_dir=str(tiny_data),
        run_dir=str(run_dir),
        model="feddmmr",
        modality=[f"text={text_file}"],
        **{**TINY, **overrides},
    )


def test_feddmmr_trains_evaluates_and_reports_from_the_command_line(tiny_data, text_file, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--data-dir",
        str(tiny_data),
        "--run-dir",
        str(run_dir),
        "--model",
        "feddmmr",
        "--modality",
        f"text={text_file}",
        "--num-rounds",
        "2",
        "--alignment-weight",
        "0.1",
    ]
    for key, value in TINY.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test HR@10" in result.output
    assert json.loads((run_dir / "config.json").read_text())["modality"] == [f"text={text_file}"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["validated"] and set(last["router_weights"]) == {"text"}
    assert last["router_weights"]["text"] == pytest.approx(1.0)  # one expert takes all the weight
    assert last["memory"]["short_term_size"] > 0 and last["memory"]["long_term_size"] > 0
    assert 0 < last["memory"]["write_ratio"] <= 1 and np.isfinite(last["gate"])
    final = json.loads((run_dir / "final.json").read_text())
    assert evaluate_run(run_dir)["test"] == final["test"]  # model and memories of the best round
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["memory"]["positives"].sum() > 0

    report = runner.invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0, report.output
    for name in ("training.png", "router.png", "memory.png"):
        assert (run_dir / "plots" / name).stat().st_size > 0


def test_feddmmr_without_modality_or_with_bad_settings_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "feddmmr", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "needs at least one modality" in result.output
    with pytest.raises(ValueError, match="modality is for model=feddmmr"):
        TrainConfig(modality=["text=x.npz"])
    with pytest.raises(ValueError, match="stage=2"):
        TrainConfig(stage=2)
    with pytest.raises(ValueError, match="content_history matches .* it needs model=feddmmr"):
        TrainConfig(content_history=5)
    with pytest.raises(
        ValueError, match="modality_objective=holdout splits the targets .* fedsasrec has no modality side"
    ):
        TrainConfig(modality_objective="holdout")
    with pytest.raises(
        ValueError,
        match="modality_objective: expected one of joint, holdout, holdout-backbone, got 'held-out'",
    ):
        TrainConfig(model="feddmmr", modality=["text=t.npz"], modality_objective="held-out")
    with pytest.raises(ValueError, match=r"content_history must be in \[0, max_seq_len=200\].*got 201"):
        TrainConfig(model="feddmmr", modality=["text=t.npz"], content_history=201)
    with pytest.raises(ValueError, match="stage: expected one of 1, 2, 3, got 4"):
        TrainConfig(model="feddmmr", modality=["text=x.npz"], stage=4)
    with pytest.raises(ValueError, match="NAME=FILE"):
        TrainConfig(model="feddmmr", modality=["x.npz"])
    with pytest.raises(ValueError, match="contrastive"):
        TrainConfig(model="feddmmr", modality=["text=x.npz"], contrastive_weight=0.1)
    with pytest.raises(
        ValueError, match="with modality_objective=holdout the modality side trains on each window's last"
    ):
        TrainConfig(
            model="feddmmr",
            modality=["text=x.npz", "genre=g.npz"],
            contrastive_weight=0.1,
            modality_objective="holdout",
        )
    with pytest.raises(ValueError, match=r"memory_novelty: expected a number in \[0, 2\], got 2.5"):
        TrainConfig(model="feddmmr", modality=["text=x.npz"], memory_novelty=2.5)


def test_the_novelty_setting_reaches_the_memory():
    from feddmmr.run_setup import memory_config

    assert (
        memory_config(
            TrainConfig(model="feddmmr", modality=["text=x.npz"], memory_novelty=0.4)
        ).novelty_threshold
        == 0.4
    )
    assert memory_config(TrainConfig()).novelty_threshold == 0.583  # the seed's value


def test_resume_restores_the_memories(tiny_data, text_file, tmp_path):
    settings = dict(validate_every=1, patience=0, alignment_weight=0.1)
    reference = train(config(tiny_data, tmp_path / "reference", text_file, num_rounds=4, **settings))
    train(config(tiny_data, tmp_path / "resumed", text_file, num_rounds=2, **settings))
    resumed = train(config(tiny_data, tmp_path / "resumed", text_file, num_rounds=4, **settings), resume=True)
    assert [r["val"] for r in resumed.history] == [r["val"] for r in reference.history]
    assert [r["memory"] for r in resumed.history] == [r["memory"] for r in reference.history]
    assert resumed.final["test"] == reference.final["test"]
    a = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for name, tensor in a["memory"].items():
        assert torch.equal(b["memory"][name], tensor), name
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name


def test_staged_training_from_a_fedsasrec_checkpoint(tiny_data, text_file, tmp_path, caplog):
    backbone = train(
        TrainConfig(data_dir=str(tiny_data), run_dir=str(tmp_path / "stage1"), stage=1, num_rounds=1, **TINY)
    )
    fedsasrec = load_checkpoint(backbone.run_dir / "checkpoints" / "best.pt")["model"]
    with caplog.at_level("INFO"):
        stage2 = train(
            config(
                tiny_data,
                tmp_path / "stage2",
                text_file,
                num_rounds=2,
                stage=2,
                weight_decay=1e-4,
                init_from=str(backbone.run_dir),
            )
        )
    assert f"loaded {len(fedsasrec)} tensors" in caplog.text
    after2 = load_checkpoint(stage2.run_dir / "checkpoints" / "last.pt")["model"]
    for name, tensor in fedsasrec.items():  # the backbone: loaded, then frozen through both rounds
        assert torch.equal(after2["sasrec." + name], tensor), name
    assert not torch.equal(after2["gate"], torch.tensor(0.1))  # the modality parts did train

    stage3 = train(
        config(
            tiny_data,
            tmp_path / "stage3",
            text_file,
            num_rounds=1,
            stage=3,
            weight_decay=1e-4,
            init_from=str(stage2.run_dir / "checkpoints" / "last.pt"),
        )
    )
    after3 = load_checkpoint(stage3.run_dir / "checkpoints" / "last.pt")["model"]
    assert torch.equal(after3["sasrec.item_embedding.weight"], fedsasrec["item_embedding.weight"])
    changed = {n for n, t in after3.items() if not torch.equal(t, after2[n])}
    assert changed == set(after3) - {"sasrec.item_embedding.weight"}


def test_every_preset_resolves():
    presets = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in presets} >= {
        "fedsasrec",
        "continue_pretrain",
        "drift_adaptive",
        "stage1",
        "stage2",
        "stage3",
    }
    for preset in presets:
        resolved = resolve_config(preset, data_dir="data/ml-1m")
        assert resolved.data_dir == "data/ml-1m"
    drift = resolve_config(CONFIGS / "drift_adaptive.yaml")
    assert (drift.model, drift.memory_long_capacity, drift.alignment_weight) == ("feddmmr", 50, 0.1)
    assert (
        drift.num_rounds,
        drift.client_fraction,
        drift.patience,
        drift.learning_rate,
        drift.weight_decay,
        drift.batch_size,
        drift.num_negatives,
    ) == (20, 0.1, 10, 1e-4, 1e-4, 32, 4)
    again = resolve_config(CONFIGS / "continue_pretrain.yaml")
    assert (
        again.num_rounds,
        again.learning_rate,
        again.weight_decay,
        again.batch_size,
        again.num_negatives,
        again.client_fraction,
    ) == (10, 1e-4, 1e-4, 64, 4, 0.2)
    assert [resolve_config(CONFIGS / f"stage{s}.yaml").stage for s in (1, 2, 3)] == [1, 2, 3]

    measured = resolve_config(CONFIGS / "feddmmr_text.yaml")
    assert (
        measured.model,
        measured.modality,
        measured.content_history,
        measured.modality_objective,
        measured.top_users,
    ) == ("feddmmr", ["text=features/ml-1m-text.npz"], 5, "holdout-backbone", 1000)
    cold = resolve_config(CONFIGS / "feddmmr_cold.yaml")
    assert (
        cold.model,
        cold.item_tower,
        cold.content_history,
        cold.modality_objective,
        cold.max_seq_len,
        cold.negatives,
        cold.num_negatives,
    ) == ("feddmmr", "content", 5, "holdout-backbone", 50, "per-target", 4)
    override = resolve_config(CONFIGS / "drift_adaptive.yaml", modality=["text=other.npz"])
    assert override.modality == ["text=other.npz"]  # the command line replaces the preset's list
