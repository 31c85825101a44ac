"""Fetch the official MovieLens archives from GroupLens into a local cache.

The MovieLens licence forbids redistribution, so the project never ships the data: users download
it from GroupLens (this module), or put a copy they downloaded themselves into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from feddmmr.errors import FeddmmrError

logger = logging.getLogger(__name__)

# name -> (official URL, MD5 of the zip as published by GroupLens in <url>.md5)
DATASETS: dict[str, tuple[str, str]] = {
    "ml-1m": (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
    ),
    "ml-100k": (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    ),
}

DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


class DownloadError(FeddmmrError):
    """A dataset could not be fetched or verified; the message says how to provide it by hand."""


def default_cache_dir() -> Path:
    """`$FEDDMMR_CACHE` when set, else ~/.cache/feddmmr."""
    configured = os.environ.get("FEDDMMR_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "feddmmr"


def download_dataset(name: str, cache_dir: str | Path | None = None, *, url: str | None = None) -> Path:
    """Return `<cache>/<name>/`, the extracted archive, downloading and verifying it if needed.

    A zip already at `<cache>/<name>.zip` (e.g. downloaded by hand) is verified and extracted
    instead of downloading. `url` overrides the official address; the checksum still applies.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    official_url, expected_md5 = DATASETS[name]
    url = url or official_url
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / name
    if target.is_dir():
        # Extraction ends with an atomic rename, so an existing folder is complete.
        return target
    cache.mkdir(parents=True, exist_ok=True)
    manual_zip = cache / f"{name}.zip"
    if manual_zip.is_file():
        _verify_md5(manual_zip, expected_md5, origin=str(manual_zip), delete_on_mismatch=False)
        _extract_atomically(manual_zip, target)
        return target
    archive = _fetch(url, cache, name)
    try:
        _verify_md5(archive, expected_md5, origin=url, delete_on_mismatch=True)
        _extract_atomically(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    return target


def _fetch(url: str, cache: Path, name: str) -> Path:
    """Download `url` to a temporary file inside `cache` and return its path."""
    logger.info("downloading %s into %s", url, cache)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip.part", dir=cache)
    archive = Path(temporary)
    try:
        with (
            os.fdopen(handle, "wb") as sink,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            shutil.copyfileobj(response, sink, _CHUNK_BYTES)
    except (urllib.error.URLError, OSError) as error:
        archive.unlink(missing_ok=True)
        raise DownloadError(_unreachable_message(url, cache, name, error)) from error
    return archive


def _unreachable_message(url: str, cache: Path, name: str, error: Exception) -> str:
    reason = getattr(error, "reason", error)
    ratings_file = "ratings.dat" if name == "ml-1m" else "u.data"
    return (
        f"could not reach {url} ({reason}). If this machine is offline, download that file "
        f"elsewhere and put it at {cache / f'{name}.zip'} (it is verified and extracted on the "
        f"next run), or put the extracted folder at {cache / name}/. Alternatively, --data-dir "
        f"can point at any folder holding {ratings_file}."
    )


def _verify_md5(archive: Path, expected: str, *, origin: str, delete_on_mismatch: bool) -> None:
    digest = hashlib.md5()
    with open(archive, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual == expected:
        return
    if delete_on_mismatch:
        archive.unlink(missing_ok=True)
    raise DownloadError(
        f"{origin}: MD5 checksum mismatch: expected {expected}, got {actual}"
        + ("; the download was deleted" if delete_on_mismatch else "; delete or replace the file")
    )


def _extract_atomically(archive: Path, target: Path) -> None:
    """Extract into a temporary folder next to `target`, then rename it into place.

    The official zips hold a single top-level folder named like the dataset (ml-1m/); that folder
    becomes `target`. Otherwise the archive's whole content does.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract.", dir=target.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(staging)  # extractall drops absolute paths and '..' parts
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{archive}: not a valid zip archive ({error})") from error
        entries = list(staging.iterdir())
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name == target.name:
            extracted = entries[0]
        else:
            extracted = staging
        extracted.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("extracted %s into %s", archive, target)
