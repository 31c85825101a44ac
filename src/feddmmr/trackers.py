"""Experiment trackers (`--tracker tensorboard|mlflow`, optional extras): the config, every
round's metrics and timings, then the final figures and the best checkpoint. Both write to a
local folder and need no network.

- tensorboard: RUN_DIR/tensorboard (`tensorboard --logdir runs` shows every run under runs/);
- mlflow: $MLFLOW_TRACKING_URI when set, else a SQLite store shared by the runs of one folder
  (RUN_DIR/../mlflow.db, artifacts in RUN_DIR/../mlartifacts; `mlflow ui --backend-store-uri
  sqlite:///runs/mlflow.db`), experiment "feddmmr", one MLflow run per feddmmr run (a resumed
  run continues its MLflow run).

Metric names: the record's keys joined with "/", "@" written "_at_" (MLflow allows no "@"):
val/HR_at_10, train/loss, clients/dropped, ...
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from feddmmr import provenance
from feddmmr.callbacks import Callback
from feddmmr.checkpoint import write_json
from feddmmr.errors import InputError
from feddmmr.run_state import Run

log = logging.getLogger(__name__)

# A round's record (metrics.jsonl) under the names the trackers show.
RENAMED = {
    "train_loss": "train/loss",
    "train_seconds": "time/train_seconds",
    "eval_seconds": "time/eval_seconds",
    "clients": "clients/sampled",
    "failed_clients": "clients/failed",
    "dropped_clients": "clients/dropped",
    "skipped_steps": "train/skipped_steps",
    "bytes_down": "wire/bytes_down",
    "bytes_up": "wire/bytes_up",
}
NOT_METRICS = {"round", "validated", "next_validation"}


def latest_start(run: Run) -> dict:
    """This start's entry of provenance.json: versions, commit, command line, device."""
    return json.loads((run.run_dir / provenance.NAME).read_text())["starts"][-1]


def provenance_tags(start: dict) -> dict[str, str]:
    """A start's provenance as flat MLflow tags (feddmmr.commit, feddmmr.package.torch, ...)."""
    source = start.get("source") or {}
    tags = {
        "feddmmr.device": start["device"],
        "feddmmr.python": start["python"],
        "feddmmr.command": " ".join(start["command"]),
        "feddmmr.started": start["started"],
        "feddmmr.commit": source.get("commit", "none (an installed package)"),
        "feddmmr.changed": str(source.get("changed", False)).lower(),
    }
    tags.update({f"feddmmr.package.{name}": version for name, version in start["packages"].items()})
    return tags


def metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def round_metrics(record: dict) -> dict[str, float]:
    """The numbers of a round's record, flat: {"val/HR_at_10": 0.61, "train/loss": 0.42, ...}."""
    out = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{prefix}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # no NaN
            out[metric_name(prefix)] = float(value)

    for key, value in record.items():
        if key not in NOT_METRICS:
            add(RENAMED.get(key, key), value)
    return out


def final_metrics(final: dict) -> dict[str, float]:
    return {
        metric_name(f"{split}/{name}"): float(value)
        for split in ("valid", "test", "test_full", "test_sampled")
        if split in final
        for name, value in final[split].items()
    }


class TensorBoardTracker(Callback):
    def __init__(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
        if run.state.round == 0:
            self.writer.add_text("config", "```\n" + json.dumps(run.config.to_dict(), indent=2) + "\n```", 0)
        start = latest_start(run)
        self.writer.add_text("provenance", "```\n" + json.dumps(start, indent=2) + "\n```", run.state.round)
        log.info("tensorboard: logging to %s", run.run_dir / "tensorboard")

    def on_round_end(self, run: Run, record: dict) -> None:
        for name, value in round_metrics(record).items():
            self.writer.add_scalar(name, value, record["round"])
        self.writer.flush()

    def on_run_end(self, run: Run, final: dict) -> None:
        # The final figures against the run's settings: TensorBoard's HParams view compares runs by them
        # (its scalars are the final/* charts, at the best round).
        settings = {
            k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in run.config.to_dict().items()
        }
        self.writer.add_hparams(
            settings,
            {f"final/{k}": v for k, v in final_metrics(final).items()},
            run_name=".",
            global_step=final["best_round"],
        )
        self.writer.add_text("final", "```\n" + json.dumps(final, indent=2) + "\n```", final["best_round"])
        self.writer.add_text("best_checkpoint", str(run.checkpoints / "best.pt"), final["best_round"])
        self.close()

    def close(self) -> None:
        self.writer.close()


# What MLflow's tracking URI may start with (a path without a scheme is a local file store).
# A database scheme may name its driver (postgresql+psycopg2), as MLflow allows.
MLFLOW_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "uc")
SERVER_CHECK_SECONDS = 5.0


def check_tracking_uri(config) -> None:
    """Before the run folder is made: an MLflow URI with an unknown scheme, or a server that does not
    answer within SERVER_CHECK_SECONDS, is an error (MLflow itself would retry for minutes, then fail
    with a traceback after the run folder exists)."""
    uri, timeout = os.environ.get("MLFLOW_TRACKING_URI"), SERVER_CHECK_SECONDS
    if "mlflow" not in config.tracker or not uri:
        return
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme and scheme.split("+")[0] not in MLFLOW_SCHEMES and not os.path.isabs(uri):
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: unknown scheme {scheme!r}; expected one of "
            f"{', '.join(MLFLOW_SCHEMES)}, or a folder path"
        )
    if scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: no MLflow server answered within {timeout:g} s ({reason}); "
            f"start it (`mlflow server`), fix or unset the variable (unset: a local SQLite store "
            f"next to the run), or drop --tracker mlflow"
        ) from None


class MlflowTracker(Callback):
    ID_FILE = "mlflow.json"  # the MLflow run this feddmmr run logs to, for --resume

    def __init__(self, run: Run) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machines; nothing to send
        import mlflow

        logging.getLogger("mlflow").setLevel(
            logging.WARNING
        )  # its INFO lines (database setup) are not the run's
        self.mlflow = mlflow
        uri = (
            os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run.run_dir.resolve().parent / 'mlflow.db'}"
        )
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name("feddmmr")
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow.create_experiment(
                "feddmmr", artifact_location=(run.run_dir.resolve().parent / "mlartifacts").as_uri()
            )
        )
        id_file = run.run_dir / self.ID_FILE
        previous = json.loads(id_file.read_text())["run_id"] if id_file.exists() else None
        self.active = mlflow.start_run(
            run_id=previous,
            experiment_id=None if previous else experiment_id,
            run_name=None if previous else run.run_dir.name,
        )
        if previous is None:
            write_json(id_file, {"run_id": self.active.info.run_id, "tracking_uri": uri})
            mlflow.log_params(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in run.config.to_dict().items()}
            )
        mlflow.set_tags(provenance_tags(latest_start(run)))  # how it was made: its latest start's
        log.info("mlflow: logging to %s (run %s)", uri, self.active.info.run_id)

    def on_round_end(self, run: Run, record: dict) -> None:
        self.mlflow.log_metrics(round_metrics(record), step=record["round"])

    def on_run_end(self, run: Run, final: dict) -> None:
        self.mlflow.log_metrics(
            {f"final/{k}": v for k, v in final_metrics(final).items()}, step=final["best_round"]
        )
        self.mlflow.log_dict(final, "final.json")
        self.mlflow.log_artifact(str(run.checkpoints / "best.pt"), "checkpoints")
        self.mlflow.end_run()

    def close(self) -> None:
        if self.mlflow.active_run() is not None:  # the run failed or was interrupted
            self.mlflow.end_run(status="KILLED")


def make_trackers(run: Run) -> list:
    return [
        {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}[name](run) for name in run.config.tracker
    ]
