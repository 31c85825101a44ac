"""The README's quick tour runs as written, from an empty folder."""

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from feddmmr.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_tour() -> list[list[str]]:
    section = README.read_text().split("## Quick tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]
    assert commands and all(command[0] == "feddmmr" for command in commands)
    return [command[1:] for command in commands]


def test_the_quick_tour_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in quick_tour():
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, f"feddmmr {' '.join(command)}:\n{result.output[-3000:]}"
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 0
    assert list((tmp_path / "runs" / "lr1" / "tensorboard").iterdir())


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    api = README.parent / "docs" / "API.md"
    block = re.search(r"```python\n(.*?)```", api.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(api), "exec"), {})
    printed = capsys.readouterr().out
    assert "HR@10" in printed and (tmp_path / "runs" / "api" / "final.json").exists()
