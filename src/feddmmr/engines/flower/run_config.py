"""TrainConfig as a flat Flower config: one hyphenated key per field.

The same mapping serves the run config (`[tool.flwr.app.config]` in pyproject.toml, overridden
with `flwr run --run-config "num-rounds=20"`) and the settings the server sends with every
message. Flower configs hold only bool, int, float and str (`flwr run` rejects a pyproject.toml
whose run config holds a list), so an unset optional setting (None) travels as "", and a list of
strings (modality) as one comma-separated string ("" = empty list).

`python -m feddmmr.engines.flower.run_config` prints the pyproject.toml block for the current
TrainConfig fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from feddmmr.config import FIELDS, TrainConfig

NOT_SET = ""
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
            raise ValueError(f"{key}={value!r}: a Flower config joins a list with {LIST_SEPARATOR!r}, "
                             f"so its items cannot contain one")
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


def _typed(key: str, value: typing.Any, hint: typing.Any, source: str) -> typing.Any:
    if typing.get_origin(hint) is list:  # a repeatable setting (modality)
        if not isinstance(value, str):
            raise ValueError(f"{source}: {key}={value!r} ({type(value).__name__}); expected one string of "
                             f"{LIST_SEPARATOR!r}-separated items")
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
    lines = ["[tool.flwr.app.config]",
             '# feddmmr TrainConfig fields ("" = not set); override with flwr run --run-config']
    for key, value in to_flower_config(config).items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: FlowerValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


if __name__ == "__main__":
    print(pyproject_block(), end="")
