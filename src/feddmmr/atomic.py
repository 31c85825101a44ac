"""Atomic writes: a temporary file in the same folder, flushed to disk, then renamed over the
target. A run killed (or a disk filled) at any moment leaves the previous file or the new one,
never half of one, and no temporary file behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable


def create_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file next to `path`. os.open with 0o666 (not tempfile.mkstemp, which forces
    0o600) so the result gets the user's umask permissions like any other file they write."""
    temp_path = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    return os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp_path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(handle)`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_path = create_temp(path)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_path, path)
    except OSError as error:
        temp_path.unlink(missing_ok=True)
        if error.filename is None and error.errno is not None:  # a failed write names no file: name this one
            raise type(error)(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
