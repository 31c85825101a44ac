"""TrainConfig as a flat Flower config: one hyphenated key per field.

The same mapping serves the run config (`[tool.flwr.app.config]` in pyproject.toml, overridden
with `flwr run --run-config "num-rounds=20"`) and the settings the server sends with every
message. Flower configs hold only bool, int, float and str (`flwr run` rejects a pyproject.toml
whose run config holds a list), so an unset optional setting (None) travels as "", and a list of
strings (modality) as one comma-separated string ("" = empty list).

The run config has one key more than TrainConfig: `resume` (false by default), which continues
the run in `run-dir` from its last checkpoint, like `feddmmr train --resume` (a deployed run whose
SuperLink was restarted).

`python -m feddmmr.flower.run_config` prints the pyproject.toml block for the current
TrainConfig fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path

from feddmmr.config import FIELDS, TrainConfig
from feddmmr.config_files import RESUME_SAFE, saved_config

NOT_SET = ""
RESUME = "resume"  # the run config's key that is not a TrainConfig field
LIST_SEPARATOR = ","
FlowerValue = typing.Union[bool, int, float, str]


def flower_key(name: str) -> str:
    return name.replace("_", "-")


def to_flower_config(config: TrainConfig) -> dict[str, FlowerValue]:
    return {flower_key(name): _flat(flower_key(name), value) for name, value in config.to_dict().items()}


def _flat(key: str, value: typing.Any) -> FlowerValue:
    if value is None:
        return NOT_SET
    if isinstance(value, list):
        if any(LIST_SEPARATOR in item for item in value):
            raise ValueError(
                f"{key}={value!r}: a Flower config joins a list with {LIST_SEPARATOR!r}, "
                f"so its items cannot contain one"
            )
        return LIST_SEPARATOR.join(value)
    return value


def from_flower_config(values: Mapping[str, typing.Any], source: str) -> TrainConfig:
    """The TrainConfig these flat values describe; missing keys keep their defaults.

    `source` names where the values came from, for error messages ("run config", "message").
    """
    hints = typing.get_type_hints(TrainConfig)
    settings = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            known = ", ".join(flower_key(n) for n in FIELDS)
            raise ValueError(f"{source}: unknown setting {key!r}; known settings: {known}")
        settings[name] = _typed(key, value, hints[name], source)
    return TrainConfig(**settings)


def from_run_config(values: Mapping[str, typing.Any]) -> tuple[TrainConfig, bool]:
    """(the TrainConfig, whether to resume) of a ServerApp's run config.

    With `resume = true` the run continues with the config saved in `run-dir`, as `feddmmr train
    --resume` does: a run config asking for other settings (besides those a resumed run may
    change) is an error, not a silent mix of two configs."""
    values = dict(values)
    resume = values.pop(RESUME, False)
    if not isinstance(resume, bool):
        raise ValueError(f"run config: {RESUME}={resume!r} ({type(resume).__name__}); expected true or false")
    requested = from_flower_config(values, "run config")
    if not resume:
        return requested, False
    if not requested.run_dir:
        raise ValueError(f'run config: {RESUME}=true continues the run in run-dir; set run-dir="PATH"')
    saved_file = Path(requested.run_dir) / "config.json"
    if not saved_file.exists():
        raise ValueError(
            f"run config: {RESUME}=true, but {saved_file} does not exist; is run-dir a feddmmr run?"
        )
    saved = saved_config(requested.run_dir, **{name: getattr(requested, name) for name in RESUME_SAFE})
    # A run config holds every setting (pyproject's defaults and the overrides), so what it asks
    # for cannot be told from what it merely repeats: compare values instead of given keys.
    differing = [
        flower_key(name)
        for name in FIELDS
        if name not in RESUME_SAFE and getattr(saved, name) != getattr(requested, name)
    ]
    if differing:
        raise ValueError(
            f"run config: {RESUME}=true continues {requested.run_dir} with its saved config, but the run "
            f"config asks for other values of {', '.join(differing)}; drop those overrides "
            f"(or start a new run in another run-dir)"
        )
    return saved, True


def _typed(key: str, value: typing.Any, hint: typing.Any, source: str) -> typing.Any:
    if typing.get_origin(hint) is list:  # a repeatable setting (modality)
        if not isinstance(value, str):
            raise ValueError(
                f"{source}: {key}={value!r} ({type(value).__name__}); expected one string of "
                f"{LIST_SEPARATOR!r}-separated items"
            )
        return value.split(LIST_SEPARATOR) if value else []
    optional = type(None) in typing.get_args(hint)
    (kind,) = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if optional and value == NOT_SET:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # TOML reads "learning-rate=1" as an integer
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    expected = kind.__name__ + (' or "" (not set)' if optional else "")
    raise ValueError(f"{source}: {key}={value!r} ({type(value).__name__}); expected {expected}")


def pyproject_block() -> str:
    """The `[tool.flwr.app.config]` table: every setting at its default, engine = flower."""
    config = dataclasses.replace(TrainConfig(), engine="flower")
    lines = [
        "[tool.flwr.app.config]",
        '# feddmmr TrainConfig fields ("" = not set); override with flwr run --run-config',
    ]
    for key, value in to_flower_config(config).items():
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append("# not a TrainConfig field: true continues the run in run-dir from its last checkpoint")
    lines.append(f"{RESUME} = false")
    return "\n".join(lines) + "\n"


def _toml_value(value: FlowerValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


if __name__ == "__main__":
    print(pyproject_block(), end="")
