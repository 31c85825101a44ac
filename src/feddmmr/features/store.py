"""Modality feature files and their alignment to a dataset's dense item ids.

A feature file holds one frozen vector per item, keyed by the item's ORIGINAL id:

- `.npz`: arrays `ids` [n] (integer or string ids) and `features` [n, D];
- `.safetensors`: tensor `features` [n, D] and optional integer tensor `ids` [n];
- `.npy`: a bare matrix [n, D] whose row i belongs to dense item i+1 (so n == num_items); this
  format only makes sense for features produced from the very same `SequenceData`.

`align_features` turns such a file into the matrix the model uses: [num_items+1, D], row 0 the
padding, rows L2-normalised, items without a feature left as zero rows and flagged unavailable
(the model masks them; filling them with noise would inject made-up signal).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddmmr.atomic import atomic_write
from feddmmr.errors import InputError, read_guarded

logger = logging.getLogger(__name__)

LOADABLE_SUFFIXES = (".npz", ".npy", ".safetensors")
SAVABLE_SUFFIXES = (".npz", ".safetensors")
_EXAMPLES_SHOWN = 5  # how many offending ids an error message lists
_MODALITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class FeatureFileError(InputError):
    """A feature file that cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class AlignedFeatures:
    """One modality aligned to a dataset's dense ids.

    - `matrix`: float32 [num_items+1, D]; row 0 (padding) and rows of unavailable items are
      zeros, every other row has unit L2 norm.
    - `available`: bool [num_items+1]; False at 0 and for items without a usable feature.
    - `num_missing`: number of real items (1..num_items) that are unavailable.
    """

    name: str
    source: str
    matrix: np.ndarray
    available: np.ndarray
    num_missing: int

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    @property
    def num_items(self) -> int:
        return self.matrix.shape[0] - 1


# --------------------------------------------------------------------------------------------
# Reading and writing files


def check_output_path(path: str | Path, ids: np.ndarray | None = None) -> Path:
    """Validate where `save_features` will write, before any expensive work produces the data."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVABLE_SUFFIXES:
        raise FeatureFileError(
            f"{path}: cannot write feature files with suffix {path.suffix!r}; expected one of "
            f"{', '.join(SAVABLE_SUFFIXES)}"
        )
    if suffix == ".safetensors" and ids is not None and np.asarray(ids).dtype.kind not in "iu":
        raise FeatureFileError(
            f"{path}: safetensors stores only numeric tensors but the item ids are not integers; "
            f"expected integer ids, or write a .npz file instead"
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise FeatureFileError(f"{path}: {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)  # checked early: a folder that cannot be made fails now
    return path


def save_features(path: str | Path, ids: np.ndarray, features: np.ndarray) -> Path:
    """Write `ids` [n] and `features` [n, D] to a .npz or .safetensors file, atomically.

    The data goes to a temporary file in the same folder first and is then renamed over `path`,
    so a crash never leaves a truncated feature file where a later run would read it.
    """
    ids = np.asarray(ids)
    features = np.asarray(features, dtype=np.float32)
    path = check_output_path(path, ids)
    if ids.ndim != 1 or features.ndim != 2 or len(ids) != len(features):
        raise FeatureFileError(
            f"{path}: expected ids [n] and features [n, D], got ids of shape {ids.shape} and "
            f"features of shape {features.shape}"
        )
    if path.suffix.lower() == ".npz":
        # Unicode (not object) arrays, so that the file loads without pickle.
        ids = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)
        payload = _npz_bytes(ids, features)
    else:
        payload = _safetensors_bytes(ids.astype(np.int64), features)
    atomic_write(path, lambda handle: handle.write(payload))
    logger.info("Wrote %d feature rows of dimension %d to %s", len(ids), features.shape[1], path)
    return path


def load_features(path: str | Path) -> tuple[np.ndarray | None, np.ndarray]:
    """Read a feature file: (original ids, or None for a row-ordered matrix; float32 [n, D])."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOADABLE_SUFFIXES:
        raise FeatureFileError(
            f"{path}: unknown feature file type {path.suffix!r}; expected one of "
            f"{', '.join(LOADABLE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file does not exist")
    ids, matrix = read_guarded(
        path,
        f"{suffix} feature file",
        _READERS[suffix],
        fix="write it again with `feddmmr features text` or `feddmmr features image`",
    )
    return _checked_ids(path, ids, matrix), _checked_matrix(path, matrix)


def _npz_bytes(ids: np.ndarray, features: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, features=features)
    return buffer.getvalue()


def _safetensors_bytes(ids: np.ndarray, features: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"ids": np.ascontiguousarray(ids), "features": np.ascontiguousarray(features)})


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in ("ids", "features") if key not in archive.files]
        if missing:
            raise FeatureFileError(
                f"{path}: missing array(s) {', '.join(missing)}; expected arrays 'ids' [n] "
                f"and 'features' [n, D], found {', '.join(archive.files) or 'none'}"
            )
        return archive["ids"], archive["features"]


def _read_npy(path: Path) -> tuple[None, np.ndarray]:
    return None, np.load(path, allow_pickle=False)


def _read_safetensors(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    if "features" not in tensors:
        raise FeatureFileError(
            f"{path}: no tensor named 'features'; expected 'features' [n, D] and optionally "
            f"'ids' [n], found {', '.join(tensors) or 'none'}"
        )
    return tensors.get("ids"), tensors["features"]


_READERS = {".npz": _read_npz, ".npy": _read_npy, ".safetensors": _read_safetensors}


def _checked_matrix(path: str | Path, matrix: np.ndarray) -> np.ndarray:
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise FeatureFileError(
            f"{path}: features have shape {matrix.shape}; expected a non-empty matrix [n, D]"
        )
    if matrix.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: features have dtype {matrix.dtype}; expected numbers")
    return matrix.astype(np.float32, copy=False)


def _checked_ids(path: str | Path, ids: np.ndarray | None, matrix: np.ndarray) -> np.ndarray | None:
    if ids is None:
        return None
    if ids.dtype.kind not in "iuU":
        raise FeatureFileError(f"{path}: ids have dtype {ids.dtype}; expected integer or string item ids")
    if ids.ndim != 1 or len(ids) != len(matrix):
        raise FeatureFileError(
            f"{path}: ids have shape {ids.shape} but features have {len(matrix)} rows; expected "
            f"one id per feature row"
        )
    return ids


# --------------------------------------------------------------------------------------------
# Alignment to a dataset


def align_features(
    ids: np.ndarray | None,
    matrix: np.ndarray,
    item_ids: np.ndarray,
    *,
    source: str,
    name: str = "features",
    strict: bool = False,
) -> AlignedFeatures:
    """Place feature rows at the dense ids of `item_ids` (a `SequenceData.item_ids` array).

    `ids=None` means row i belongs to dense item i+1. Feature rows whose id the dataset lacks are
    normal (a file for a whole catalogue, a dataset filtered to the rated items) and are ignored
    with a log line, unless `strict`; if no id matches at all, the file is for another dataset and
    that is an error. Dataset items without a feature, or with an all-zero one, are masked.
    """
    matrix = _checked_matrix(source, np.asarray(matrix))
    ids = _checked_ids(source, None if ids is None else np.asarray(ids), matrix)
    num_items = len(item_ids) - 1
    if num_items < 1:
        raise ValueError(f"{source}: the dataset has no items to align features to")
    if ids is None:
        dense = _dense_ids_by_row_order(matrix, num_items, source)
    else:
        dense = _dense_ids_by_lookup(ids, item_ids, source, strict)
    original_of_row = item_ids[dense] if ids is None else ids
    _reject_non_finite_rows(matrix, original_of_row, source)

    kept = dense > 0
    rows = matrix[kept].astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    nonzero = norms > 0
    aligned = np.zeros((num_items + 1, matrix.shape[1]), dtype=np.float32)
    available = np.zeros(num_items + 1, dtype=bool)
    targets = dense[kept][nonzero]
    aligned[targets] = (rows[nonzero] / norms[nonzero, None]).astype(np.float32)
    available[targets] = True

    num_missing = num_items - int(available.sum())
    _log_coverage(name, source, num_items, num_missing, int((~nonzero).sum()), int((~kept).sum()))
    return AlignedFeatures(
        name=name, source=source, matrix=aligned, available=available, num_missing=num_missing
    )


def load_modality(spec: str, item_ids: np.ndarray, *, strict: bool = False) -> AlignedFeatures:
    """Load and align a modality given as `NAME=FILE` (e.g. `text=features/ml-1m-text.npz`)."""
    name, path = parse_modality_spec(spec)
    ids, matrix = load_features(path)
    return align_features(ids, matrix, item_ids, source=str(path), name=name, strict=strict)


def parse_modality_spec(spec: str) -> tuple[str, Path]:
    name, separator, file = spec.partition("=")
    name, file = name.strip(), file.strip()
    if not separator or not file or not _MODALITY_NAME.match(name):
        raise ValueError(
            f"modality {spec!r}: expected NAME=FILE with NAME a letter followed by letters, "
            f"digits, '_' or '-', e.g. text=features/ml-1m-text.npz"
        )
    return name, Path(file)


def _dense_ids_by_row_order(matrix: np.ndarray, num_items: int, source: str) -> np.ndarray:
    if len(matrix) != num_items:
        raise FeatureFileError(
            f"{source}: a matrix without ids has {len(matrix)} rows but the dataset has "
            f"{num_items} items; expected one row per item in dense-id order, or a .npz / "
            f".safetensors file with an 'ids' array of original item ids"
        )
    return np.arange(1, num_items + 1)


def _dense_ids_by_lookup(ids: np.ndarray, item_ids: np.ndarray, source: str, strict: bool) -> np.ndarray:
    """Dense id of each feature row's original id, 0 where the dataset has no such item."""
    _reject_duplicate_ids(ids, source)
    feature_keys, dataset_keys = _comparable_keys(ids, item_ids[1:])
    order = np.argsort(dataset_keys, kind="stable")
    sorted_keys = dataset_keys[order]
    positions = np.minimum(np.searchsorted(sorted_keys, feature_keys), len(sorted_keys) - 1)
    found = sorted_keys[positions] == feature_keys
    dense = np.where(found, order[positions] + 1, 0)

    unknown = ids[~found]
    if len(unknown) == len(ids):
        raise FeatureFileError(
            f"{source}: none of the {len(ids)} feature ids is an item of the dataset (feature ids "
            f"{_examples(ids)}; dataset ids {_examples(item_ids[1:])}); expected the dataset's "
            f"original item ids"
        )
    if strict and len(unknown):
        raise FeatureFileError(
            f"{source}: {len(unknown)} feature ids are not items of the dataset, e.g. "
            f"{_examples(unknown)}; expected only the dataset's item ids (strict mode)"
        )
    return dense


def _comparable_keys(ids: np.ndarray, dataset_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Integers compare as integers; anything else as text, so "42" in a CSV-built dataset still
    # matches the integer id 42 in a feature file.
    if ids.dtype.kind in "iu" and dataset_ids.dtype.kind in "iu":
        return ids.astype(np.int64), dataset_ids.astype(np.int64)
    return ids.astype(str), dataset_ids.astype(str)


def _reject_duplicate_ids(ids: np.ndarray, source: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    duplicated = values[counts > 1]
    if len(duplicated):
        raise FeatureFileError(
            f"{source}: {len(duplicated)} item ids appear more than once, e.g. "
            f"{_examples(duplicated)}; expected one feature row per item"
        )


def _reject_non_finite_rows(matrix: np.ndarray, row_ids: np.ndarray, source: str) -> None:
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise FeatureFileError(
            f"{source}: {int(bad.sum())} feature rows contain NaN or infinity, for item ids "
            f"{_examples(row_ids[bad])}; expected finite numbers"
        )


def _examples(values: np.ndarray) -> str:
    shown = ", ".join(str(value) for value in values[:_EXAMPLES_SHOWN])
    return f"[{shown}{', ...' if len(values) > _EXAMPLES_SHOWN else ''}]"


def _log_coverage(
    name: str, source: str, num_items: int, num_missing: int, num_zero: int, num_ignored: int
) -> None:
    logger.info(
        "Modality %s (%s): %d of %d items have a feature; %d masked as unavailable "
        "(%d of them had an all-zero row); %d feature rows for ids not in the dataset ignored",
        name,
        source,
        num_items - num_missing,
        num_items,
        num_missing,
        num_zero,
        num_ignored,
    )


def aligned_rows(new_ids: np.ndarray, feature: AlignedFeatures) -> AlignedFeatures:
    """`feature` (aligned to a catalogue that ends with `new_ids`) cut to the new items' rows."""
    start = len(feature.matrix) - len(new_ids)
    keep = np.concatenate([[0], np.arange(start, len(feature.matrix))])
    return dataclasses.replace(
        feature,
        matrix=feature.matrix[keep],
        available=feature.available[keep],
        num_missing=int((~feature.available[start:]).sum()),
    )
