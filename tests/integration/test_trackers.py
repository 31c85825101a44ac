"""The trackers write what a run measured, read back with each tracker's own reader."""

import json

import pytest
from helpers import TINY_FLAGS
from typer.testing import CliRunner

from feddmmr.cli import app
from feddmmr.trackers import round_metrics

runner = CliRunner()
TINY = [
    *TINY_FLAGS,
    "--num-rounds",
    "3",
    "--validate-every",
    "1",
]


def test_round_metrics_flatten_a_record_under_tracker_names():
    record = {
        "round": 4,
        "validated": True,
        "train_loss": 0.5,
        "train_seconds": 1.5,
        "dropped_clients": 0,
        "val": {"HR@10": 0.6, "NDCG@10": 0.4},
        "memory": {"long_term_size": 12.0},
        "dp": {"epsilon": None},
        "next_validation": 6,
    }
    assert round_metrics(record) == {
        "train/loss": 0.5,
        "time/train_seconds": 1.5,
        "clients/dropped": 0.0,
        "val/HR_at_10": 0.6,
        "val/NDCG_at_10": 0.4,
        "memory/long_term_size": 12.0,
    }


def train_with(tiny_data, run_dir, tracker):
    result = runner.invoke(
        app, ["train", "--data-dir", str(tiny_data), "--run-dir", str(run_dir), "--tracker", tracker, *TINY]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((run_dir / "final.json").read_text())


def test_tensorboard_holds_every_round_and_the_final_figures(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, final = train_with(tiny_data, tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in records])
    assert [e.value for e in events.Scalars("val/HR_at_10")] == pytest.approx(
        [r["val"]["HR@10"] for r in records]
    )
    test_hr = events.Scalars("final/test/HR_at_10")
    assert test_hr[0].step == final["best_round"] and test_hr[0].value == pytest.approx(
        final["test"]["HR@10"]
    )
    from tensorboard.plugins.hparams import plugin_data_pb2  # the HParams view: the run's settings

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["num_rounds"].number_value == 3 and hparams["tracker"].string_value == '["tensorboard"]'
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())["starts"][-1]
    assert events.Tensors("provenance/text_summary")  # how the run was made, as a text panel
    assert (
        provenance["packages"]["torch"]
        in events.Tensors("provenance/text_summary")[0].tensor_proto.string_val[0].decode()
    )


def test_mlflow_holds_the_config_every_round_the_final_figures_and_the_best_checkpoint(tiny_data, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    records, final = train_with(tiny_data, run_dir, "mlflow")
    saved = json.loads((run_dir / "mlflow.json").read_text())
    assert saved["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    client = MlflowClient(saved["tracking_uri"])
    logged = client.get_run(saved["run_id"])
    assert logged.data.params["num_rounds"] == "3" and logged.data.params["tracker"] == '["mlflow"]'
    start = json.loads((run_dir / "provenance.json").read_text())["starts"][-1]
    assert logged.data.tags["feddmmr.package.torch"] == start["packages"]["torch"]
    assert logged.data.tags["feddmmr.command"] == " ".join(start["command"])
    history = client.get_metric_history(saved["run_id"], "val/HR_at_10")
    assert [(m.step, m.value) for m in history] == [
        (r["round"], pytest.approx(r["val"]["HR@10"])) for r in records
    ]
    assert logged.data.metrics["final/test/NDCG_at_10"] == pytest.approx(final["test"]["NDCG@10"])
    assert logged.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(saved["run_id"])} | {
        a.path for a in client.list_artifacts(saved["run_id"], "checkpoints")
    }
    assert {"final.json", "checkpoints/best.pt"} <= artifacts
    again = runner.invoke(app, ["train", "--resume", str(run_dir)])  # finished: tests again, same MLflow run
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == saved["run_id"]
    assert len(client.search_runs([logged.info.experiment_id])) == 1
