"""download_dataset without a network: file:// URLs, patched checksums, simulated outages."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from feddmmr.data import download
from feddmmr.data.download import DownloadError, default_cache_dir, download_dataset
from feddmmr.data.readers import load_interactions

RATINGS = "1::10::5::100\n1::11::4::101\n"


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_ml1m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file:// URL of a small ml-1m-shaped zip, registered with its checksum."""
    archive = make_zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": RATINGS, "ml-1m/README": "x"})
    monkeypatch.setitem(download.DATASETS, "ml-1m", (archive.as_uri(), md5_of(archive)))
    return archive.as_uri()


def forbid_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)


def test_downloads_verifies_and_extracts(tmp_path: Path, fake_ml1m: str) -> None:
    cache = tmp_path / "cache"
    target = download_dataset("ml-1m", cache, url=fake_ml1m)
    assert target == cache / "ml-1m"
    assert (target / "ratings.dat").read_text() == RATINGS
    assert sorted(path.name for path in cache.iterdir()) == ["ml-1m"]  # no temp files left
    assert load_interactions(target).items.tolist() == [10, 11]


def test_official_url_is_used_by_default(tmp_path: Path, fake_ml1m: str) -> None:
    # fake_ml1m registered the file:// URL as the dataset's URL.
    assert (download_dataset("ml-1m", tmp_path / "cache") / "ratings.dat").is_file()


def test_existing_folder_skips_the_download(
    tmp_path: Path, fake_ml1m: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    download_dataset("ml-1m", cache, url=fake_ml1m)
    forbid_network(monkeypatch)
    assert download_dataset("ml-1m", cache, url=fake_ml1m) == cache / "ml-1m"


def test_manually_placed_zip_is_verified_and_extracted(
    tmp_path: Path, fake_ml1m: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-1m.zip").write_bytes((tmp_path / "ml-1m.zip").read_bytes())
    forbid_network(monkeypatch)
    assert (download_dataset("ml-1m", cache) / "ratings.dat").read_text() == RATINGS


def test_wrong_checksum_names_both_and_deletes_the_download(
    tmp_path: Path, fake_ml1m: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    actual = md5_of(tmp_path / "ml-1m.zip")
    monkeypatch.setitem(download.DATASETS, "ml-1m", (fake_ml1m, "0" * 32))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as error:
        download_dataset("ml-1m", cache)
    message = str(error.value)
    assert f"expected {'0' * 32}, got {actual}" in message and fake_ml1m in message
    assert list(cache.iterdir()) == []


def test_unreachable_url_says_where_to_put_a_manual_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_network(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as error:
        download_dataset("ml-1m", cache)
    message = str(error.value)
    assert "could not reach https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message
    assert str(cache / "ml-1m.zip") in message
    assert str(cache / "ml-1m") in message
    assert "--data-dir" in message and "ratings.dat" in message
    assert list(cache.iterdir()) == []


def test_zip_without_a_top_folder_becomes_the_dataset_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_zip(tmp_path / "flat.zip", {"u.data": "1\t2\t3\t4\n"})
    monkeypatch.setitem(download.DATASETS, "ml-100k", (archive.as_uri(), md5_of(archive)))
    target = download_dataset("ml-100k", tmp_path / "cache")
    assert (target / "u.data").is_file()


def test_corrupt_zip_with_matching_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"not a zip")
    monkeypatch.setitem(download.DATASETS, "ml-1m", (archive.as_uri(), md5_of(archive)))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        download_dataset("ml-1m", cache)
    assert list(cache.iterdir()) == []


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'ml-20m'; expected one of ml-1m, ml-100k"):
        download_dataset("ml-20m", tmp_path)


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDDMMR_CACHE", str(tmp_path / "custom"))
    assert default_cache_dir() == tmp_path / "custom"
    monkeypatch.delenv("FEDDMMR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "feddmmr"


def test_official_archives_and_checksums() -> None:
    assert download.DATASETS["ml-1m"] == (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
    )
    assert download.DATASETS["ml-100k"] == (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
    )
