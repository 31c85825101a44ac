"""A run directory says how each start of the run was made."""

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_golden import SMALL  # noqa: E402

from feddmmr import __version__  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.train import train  # noqa: E402


def test_each_start_records_versions_source_command_and_device(tmp_path):
    config = TrainConfig(**{**SMALL, "num_rounds": 1, "run_dir": str(tmp_path / "run")})
    train(config)
    train(dataclasses.replace(config, num_rounds=2), resume=True)
    starts = json.loads((tmp_path / "run" / "provenance.json").read_text())["starts"]
    assert [s["resume"] for s in starts] == [False, True]
    for start in starts:
        assert start["packages"]["feddmmr"] == __version__ and start["packages"]["torch"]
        assert start["device"].startswith("cpu: ") and start["command"] == sys.argv
        source = start["source"]  # this test runs from the project's git checkout
        assert source is None or (len(source["commit"]) == 40 and isinstance(source["changed"], bool))
    assert "feddmmr " + __version__ in (tmp_path / "run" / "run.log").read_text()
