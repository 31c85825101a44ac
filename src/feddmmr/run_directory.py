"""A run directory belongs to one run: one writer at a time (a lock), no new run over an old one,
and a resumed run reads the same data it started with (data.json)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from feddmmr.checkpoint import write_json
from feddmmr.data.types import SequenceData
from feddmmr.errors import FeddmmrError, InputError, RunDirectoryInUse, read_guarded

try:
    import fcntl
except ImportError:  # Windows has no POSIX file locks: training refuses to start (RunLock)
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
NO_LOCK = (
    "training locks its run directory with a POSIX file lock (fcntl), which Windows lacks: train under WSL2, "
    "Linux or macOS; a trained model loads and recommends anywhere"
)
DATA_NAME = "data.json"


class RunLock:
    """An exclusive lock on RUN_DIR/.lock while a run writes there. The operating system drops it
    when the process ends, however it ends (kill -9 included), so a stale lock cannot block a resume."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RunDirectoryInUse(
                f"{run_dir} is in use by another feddmmr process (pid {holder}); wait for it to "
                f"finish, or pick another --run-dir"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


class RunLog:
    """RUN_DIR/run.log: the package's log lines while the run is open, with their times (a resumed
    run appends), whatever the console shows."""

    def __init__(self, run_dir: Path) -> None:
        self.handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        self.logger = logging.getLogger("feddmmr")
        if self.logger.getEffectiveLevel() > logging.INFO:  # a library user who set up no logging
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def claim(run_dir: Path, *, resume: bool) -> RunLock:
    """Make (or, resuming, find) the run directory and lock it. A new run never starts in a folder
    that already holds one, finished or not: that run would be mixed with this one."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--run-dir {run_dir} is a file; expected a folder (new or a run's)")
    if fcntl is None:  # before the folder is made: nothing is left behind
        raise FeddmmrError(NO_LOCK)
    if resume and not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir}: no config.json; is this a feddmmr run directory?")
    if not resume and (run_dir / "config.json").exists():
        raise InputError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunLock(run_dir)


def fingerprint(data: SequenceData, feature_files: dict[str, Path]) -> dict:
    """What identifies a run's data: the dataset's sizes and a hash of every sequence and id, and
    a hash of each modality feature file (FedDMMR)."""
    digest = hashlib.sha256()
    for array in (data.user_ids, data.item_ids, data.offsets, data.items):
        digest.update(
            np.ascontiguousarray(array).astype(str) if array.dtype == object else np.ascontiguousarray(array)
        )
    return {
        "source": data.source,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_interactions,
        "sha256": digest.hexdigest(),
        "features": {
            name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in feature_files.items()
        },
    }


def record_data(run_dir: Path, data: SequenceData, feature_files: dict[str, Path]) -> None:
    write_json(run_dir / DATA_NAME, fingerprint(data, feature_files))


def check_data(run_dir: Path, data: SequenceData, feature_files: dict[str, Path]) -> None:
    """The data read now is the data the run started with; else an error saying what differs."""
    path = run_dir / DATA_NAME
    if not path.exists():  # a run from before data.json: nothing to compare with
        log.warning(
            "%s: no %s (a run from an older feddmmr), so the data cannot be checked against the run's; "
            "recording the data read now",
            run_dir,
            DATA_NAME,
        )
        record_data(run_dir, data, feature_files)
        return
    saved = read_guarded(
        path,
        "data record",
        lambda p: json.loads(p.read_text()),
        fix="delete it to record the data read now (unchecked), or start a new run",
    )
    now = fingerprint(data, feature_files)
    changed = sorted(
        name for name, digest in now["features"].items() if saved.get("features", {}).get(name) != digest
    )
    if changed:
        raise InputError(
            f"{run_dir}: the feature file of modality {changed[0]} ({feature_files[changed[0]]}) is not "
            f"the one this run started with; restore it, or start a new run"
        )
    differences = [
        f"{key} {saved.get(key)} -> {now[key]}"
        for key in ("users", "items", "interactions")
        if saved.get(key) != now[key]
    ]
    if differences or saved.get("sha256") != now["sha256"]:
        raise InputError(
            f"{run_dir}: the data at {data.source} is not the data this run started with "
            f"({'; '.join(differences) or 'same sizes, different sequences'}); restore that data, or "
            f"start a new run"
        )
