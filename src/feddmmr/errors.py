"""Failures a user can act on, and the one way files are read back.

The CLI prints an expected failure as its message alone (no traceback; `--debug` shows one) and
exits non-zero: `InputError`s and the `ValueError`s and missing files of bad input with 2, the
failures of a run (a full disk, a diverged model, a run directory in use) with 1.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class FeddmmrError(Exception):
    """A failure the message alone explains: what failed, the value found, what to do."""

    exit_code = 1


class InputError(FeddmmrError, ValueError):
    """Bad input: a flag, a config key or a file the user gave."""

    exit_code = 2


class CorruptFile(InputError):
    """A file that cannot be read back: truncated, empty, or not what its name says."""


def diverged_advice(config, run_dir) -> str:
    """What to do when training diverged, for a `TrainingDiverged` message."""
    return (
        f"Start a new run with a lower --learning-rate (now {config.learning_rate:g}) or --amp off (now "
        f"{config.amp}); --init-from {run_dir} starts it from this run's best weights"
    )


class RunDirectoryInUse(FeddmmrError):
    """Another process is writing to the run directory."""


class TrainingDiverged(FeddmmrError, RuntimeError):
    """The global model became non-finite."""


class NodesLost(FeddmmrError, RuntimeError):
    """No Flower node answered a round's training or evaluation: nothing to aggregate or measure."""


class MissingExtra(FeddmmrError, ImportError):
    """An optional dependency the settings need is not installed."""

    exit_code = 2


def exit_code(error: BaseException) -> int:
    if isinstance(error, FeddmmrError):
        return error.exit_code
    return (
        2 if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)) else 1
    )


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error, with what to do for the usual ones."""
    if not error.strerror:  # raised by our own code with a full message
        return str(error)
    where = f"{error.filename}: " if error.filename else ""
    hints = {
        errno.ENOSPC: "free some space, then continue with `feddmmr train --resume RUN_DIR`: every file written "
        "before is intact (files are replaced atomically, never overwritten in place)",
        errno.EACCES: "the folder or file is not writable by this user: pick another --run-dir / --output, or "
        "change its permissions",
        errno.EROFS: "the file system is read-only: pick another --run-dir / --output",
    }
    hints[errno.EPERM] = hints[errno.EACCES]
    hints[errno.EDQUOT] = hints[errno.ENOSPC].replace("free some space", "free some space or raise the quota")
    hints[errno.EIO] = (
        "the disk reported a read or write failure: check the device (dmesg), then continue with "
        "`feddmmr train --resume RUN_DIR` on a healthy disk: files are replaced atomically, so the "
        "ones written before are whole"
    )
    hint = hints.get(error.errno)
    return f"{where}{error.strerror}" + (f"; {hint}" if hint else "")


def out_of_memory(error: BaseException) -> str | None:
    """What to do when `error` is the device or the host running out of memory; else None."""
    text = str(error)
    if not (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
    ):
        return None
    return (
        f"out of memory ({_short(error, 120)}); lower --chunk-clients / --chunk-windows (how many clients and "
        f"windows train at once), --batch-size, --hidden-dim or --max-seq-len, or --eval sampled"
    )


def _short(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_guarded(path: str | Path, what: str, read: Callable[[Path], T], fix: str) -> T:
    """`read(path)`, with every way a damaged file fails (each loader raises its own exceptions:
    EOFError, zipfile.BadZipFile, pickle errors, RuntimeError...) turned into one `CorruptFile`
    that names the file, says what it should have been, and `fix` (what to do)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder, expected a {what} file")
    try:
        return read(path)
    except (MemoryError, KeyboardInterrupt):
        raise
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure here means the file is not readable
        size = path.stat().st_size
        state = (
            "it is empty (0 bytes)"
            if size == 0
            else f"{size} bytes, truncated or not a {what}: {type(error).__name__}: {_short(error)}"
        )
        raise CorruptFile(f"{path}: cannot read this {what} ({state}); {fix}") from error
