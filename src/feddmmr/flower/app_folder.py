"""`feddmmr flower app DIR`: a folder that `flwr run DIR ...` runs as feddmmr's Flower app, from an
installed feddmmr (no checkout). It holds only a pyproject.toml: the ServerApp and ClientApp it
names are imported from the installed package on the SuperLink and on every SuperNode."""

from __future__ import annotations

from pathlib import Path

from feddmmr import __version__
from feddmmr.checkpoint import write_text
from feddmmr.errors import InputError
from feddmmr.flower.run_config import pyproject_block

HEADER = """# feddmmr's Flower app, written by `feddmmr flower app` (feddmmr {version}). Its ServerApp and
# ClientApp are imported from the installed feddmmr: pip install "feddmmr[flower]" on every machine.
#   flwr run . local --stream --run-config 'data-dir="/abs/data" run-dir="/abs/runs/sim"'
# Every setting below can be overridden with --run-config (docs/DEPLOY.md).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "feddmmr-app"
version = "{version}"
description = "feddmmr's Flower app: FedSASRec and FedDMMR"
license = "Apache-2.0"
dependencies = ["feddmmr[flower]=={version}"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "feddmmr"

[tool.flwr.app.components]
serverapp = "feddmmr.flower.server_app:app"
clientapp = "feddmmr.flower.client_app:app"

"""


def write_app_folder(folder: str | Path) -> Path:
    """Write FOLDER/pyproject.toml (the folder is made if missing); returns its path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; expected a folder for the Flower app (made if missing)")
    pyproject = folder / "pyproject.toml"
    if pyproject.exists():
        raise InputError(f"{pyproject} exists; pick a new folder (or delete it to write the app again)")
    write_text(pyproject, HEADER.format(version=__version__) + pyproject_block())
    return pyproject
