"""How a run was made: package versions, the git commit of a source checkout, the command line,
the machine and device. `provenance.json` in the run directory holds one entry per start (the
first, then each --resume), so a resumed run says what each part of it ran on."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from feddmmr import __version__
from feddmmr.checkpoint import write_json
from feddmmr.errors import read_guarded

NAME = "provenance.json"
PACKAGES = ("torch", "numpy", "flwr", "opacus", "sentence-transformers", "mlflow", "tensorboard")


def package_versions() -> dict[str, str]:
    versions = {"feddmmr": __version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed: nothing of it ran
    return versions


def source_commit() -> dict | None:
    """The commit of the git checkout feddmmr runs from (and whether it has changes), or None for
    an installed wheel or a machine without git."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "changed": bool(status.stdout.strip())}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {_cpu_name()}, {torch.get_num_threads()} torch threads"


def _cpu_name() -> str:
    try:  # Linux names the processor model; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_start(run_dir: Path, device: torch.device, *, resume: bool) -> dict:
    """Append this start's entry to run_dir/provenance.json (written atomically) and return it."""
    entry = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resume": resume,
        "command": sys.argv,
        "packages": package_versions(),
        "source": source_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": describe_device(device),
    }
    path = run_dir / NAME
    starts = (
        read_guarded(
            path,
            "provenance record",
            lambda p: json.loads(p.read_text()),
            fix="delete it; the run's other files are unaffected",
        )["starts"]
        if path.exists()
        else []
    )
    write_json(path, {"starts": [*starts, entry]})
    return entry
