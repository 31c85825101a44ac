"""Run files written atomically (atomic.py: JSON, text, checkpoints), and checkpoints read back."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch

from feddmmr.atomic import atomic_write
from feddmmr.errors import InputError, read_guarded

log = logging.getLogger(__name__)


def json_value(value: Any) -> Any:
    """A numpy scalar (an item or user id) as the Python value JSON writes; anything else as is."""
    return value.item() if hasattr(value, "item") else value


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda h: h.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text.encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Serialised in memory first: torch.save writing to the file itself wraps a full disk's OSError
    # in a RuntimeError ("enforce fail at inline_container.cc"), which would read as a bug.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda h: h.write(buffer.getbuffer()))


def load_checkpoint(
    path: Path,
    *,
    fix: str = "give a best.pt or last.pt written by feddmmr",
    required: tuple[str, ...] = ("model",),
) -> dict[str, Any]:
    """A checkpoint (or a run directory's best.pt); a damaged file is a `CorruptFile` naming it and
    saying `fix`, a file without the `required` entries an `InputError`."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.exists():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"{path}: no checkpoints/best.pt in this run directory")
    saved = read_guarded(
        path, "checkpoint", lambda p: torch.load(p, map_location="cpu", weights_only=True), fix
    )
    missing = [key for key in required if not isinstance(saved, dict) or key not in saved]
    if missing:
        found = ", ".join(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
        raise InputError(
            f"{path}: not a feddmmr checkpoint: it lacks {', '.join(missing)} (found: {found[:200]}); {fix}"
        )
    return saved


def load_weights_into(model: torch.nn.Module, model_state: dict[str, torch.Tensor], source: str) -> int:
    """Copy every tensor of `model_state` into `model`; returns how many were loaded.

    A tensor whose name the model lacks, or whose shape differs, is an error (the original's
    continue-pre-training silently loaded nothing). Model tensors the checkpoint lacks keep their
    fresh initialisation and are listed in the log. A FedSASRec checkpoint loaded into FedDMMR
    goes into FedDMMR's `sasrec.` backbone (its names are prefixed).
    """
    own = model.state_dict()
    prefix = model.backbone_prefix
    if prefix and not any(name.startswith(prefix) for name in model_state):
        log.info("%s: a FedSASRec checkpoint: its tensors go into FedDMMR's %s backbone", source, prefix)
        model_state = {prefix + name: t for name, t in model_state.items()}
    unknown = sorted(set(model_state) - set(own))
    if unknown:
        raise ValueError(f"{source}: tensors not in this model: {', '.join(unknown[:5])}")
    mismatched = [
        f"{name} {tuple(t.shape)} vs model {tuple(own[name].shape)}"
        for name, t in model_state.items()
        if t.shape != own[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"{source}: shapes differ (different dataset or model size?): " + "; ".join(mismatched[:5])
        )
    model.load_state_dict(model_state, strict=False)
    fresh = sorted(set(own) - set(model_state))
    if fresh:
        log.info(
            "%s: %d model tensors not in the checkpoint keep their initialisation: %s",
            source,
            len(fresh),
            ", ".join(fresh[:10]),
        )
    return len(model_state)
