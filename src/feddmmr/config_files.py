"""Settings from files: presets (shipped or given by path, YAML or JSON), a run's saved
config.json, and the migrations that keep old presets and run folders readable. The settings
themselves, and their checks, are config.py's."""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from feddmmr.config import FIELDS, TrainConfig
from feddmmr.config_rules import ConfigError
from feddmmr.errors import InputError

log = logging.getLogger(__name__)


# Settings that no longer exist, and why; a preset or an old run's config.json may still hold them.
RETIRED = {
    "memory_surprise": "it never had an effect (FedDMMR's memory gates long-term writes by novelty, "
    "--memory-novelty, and no engine passed it losses)",
}


OLD_OBJECTIVE_FLAGS = ("holdout_content", "holdout_backbone")


def translate_old_settings(values: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """A preset or config.json written before --modality-objective replaced holdout_content and
    holdout_backbone: the same objective under its new name."""
    old = {name: values.pop(name) for name in OLD_OBJECTIVE_FLAGS if name in values}
    if old and "modality_objective" not in values:
        content, backbone = bool(old.get("holdout_content")), bool(old.get("holdout_backbone"))
        values["modality_objective"] = (
            "holdout-backbone" if content and backbone else "holdout" if content else "joint"
        )
        log.info(
            "%s: %s read as modality_objective=%s",
            source,
            ", ".join(f"{k}={v}" for k, v in old.items()),
            values["modality_objective"],
        )
    return values


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; a preset means the number."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


PRESETS = Path(__file__).resolve().parent / "presets"


def presets() -> dict[str, str]:
    """The presets shipped with the package: name -> the first line of its description."""
    return {
        path.stem: path.read_text().splitlines()[0].lstrip("# ").strip()
        for path in sorted(PRESETS.glob("*.yaml"))
    }


def find_preset(name_or_path: str | Path) -> Path:
    """A preset file: the path itself if it exists, else a shipped preset of that name."""
    path = Path(name_or_path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    shipped = PRESETS / f"{path.name}.yaml"
    if not shipped.exists():
        raise InputError(
            f"--config {name_or_path}: no such file, and no shipped preset of that name; the presets are "
            f"{', '.join(presets())} (`feddmmr configs`)"
        )
    return shipped


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A preset: YAML or JSON mapping of TrainConfig keys (hyphens or underscores), by path or by
    the name of a shipped preset (`presets()`)."""
    path = find_preset(path)
    is_yaml = path.suffix in (".yaml", ".yml")
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.is_dir():
        raise InputError(f"config file {path} is a folder; expected a YAML or JSON file of settings")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); expected a YAML or JSON "
            f"file of settings"
        ) from None
    try:
        raw = yaml.load(text, Loader=_YamlLoader) if is_yaml else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        shown = " ".join(str(error).split())
        raise InputError(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {shown[:300]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of settings (key: value), got {type(raw).__name__}")
    values = translate_old_settings({str(k).replace("-", "_"): v for k, v in raw.items()}, path)
    for name in sorted(set(values) & set(RETIRED)):
        log.warning("%s: setting %s is ignored: %s", path, name, RETIRED[name])
        del values[name]
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        close = {name: difflib.get_close_matches(name, FIELDS, n=1) for name in unknown[:5]}
        shown = ", ".join(
            name + (f" (did you mean {match[0]}?)" if match else "") for name, match in close.items()
        )
        raise InputError(
            f"{path}: unknown settings {shown}{' ...' if len(unknown) > 5 else ''}; "
            f"`feddmmr train --help` lists them"
        )
    return values


# Settings a resumed run may change. The first three do not affect the numbers it produces;
# `patience` decides where it stops, and a new one is applied to the saved validations (patience 0
# continues an early-stopped run to num_rounds, as if it had never stopped); a larger `num_rounds`
# extends a run (its rounds train as in a longer run; the old last round was validated, as every
# last round is).
RESUME_SAFE = frozenset({"device", "threads", "flower_round_timeout", "patience", "num_rounds"})


def saved_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config a run saved in RUN_DIR/config.json, then `overrides` (None means 'not given'),
    with run_dir = `run_dir` (the folder may have moved since)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json; is this a feddmmr run directory?")
    config = resolve_config(path, **overrides)
    config.run_dir = str(run_dir)
    return config


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the preset file, then explicit overrides (None means 'not given'). A bad
    value's error names where it came from: the flag, or the file and its key."""
    config_file = find_preset(config_file) if config_file else None
    from_file = read_config_file(config_file) if config_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return TrainConfig(**{**from_file, **given})
    except ConfigError as error:
        if error.field in given:
            raise error.at("--" + error.field.replace("_", "-")) from None
        if error.field in from_file:
            raise error.at(f"{config_file}: {error.field}") from None
        raise
