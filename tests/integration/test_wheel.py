"""The wheel, installed into a fresh virtualenv outside the checkout, does what the README promises
(scripts/check_wheel.sh: a named preset, the Flower simulation and app, a comparison report,
TensorBoard and MLflow, recommendations from the command line and from Python that agree with each
other and with the exported program, a report over three seeds). About 2 minutes: pip installs
from its cache."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_wheel.sh"


def test_the_installed_wheel_works_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}  # pip's settings stay
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    env["PYTHON"] = str(Path(sys.base_prefix) / "bin" / "python3")  # not the checkout's virtualenv
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=1800
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert result.stdout.rstrip().endswith("wheel check passed")
    table = result.stdout[result.stdout.index("run     best round") :].splitlines()
    assert table[1].split()[0] == "preset" and table[2].split()[0] == "other"
