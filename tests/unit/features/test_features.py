"""Feature files: reading, writing, and alignment to a dataset's dense item ids."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from feddmmr.errors import CorruptFile
from feddmmr.features.store import (
    FeatureFileError,
    align_features,
    load_features,
    load_modality,
    parse_modality_spec,
    save_features,
)

# Dense item i (1..4) has original id ITEM_IDS[i]; index 0 is padding.
ITEM_IDS = np.array([0, 10, 20, 30, 40])


def unit(row: list[float]) -> np.ndarray:
    vector = np.asarray(row, dtype=np.float64)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Alignment


def test_rows_land_at_dense_ids_normalised_and_masked(caplog: pytest.LogCaptureFixture) -> None:
    ids = np.array([30, 10, 99])  # 99 is not in the dataset; items 20 and 40 have no feature
    matrix = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 1.0]])

    with caplog.at_level(logging.INFO, logger="feddmmr.features.store"):
        aligned = align_features(ids, matrix, ITEM_IDS, source="f.npz", name="text")

    expected = np.zeros((5, 2), dtype=np.float32)
    expected[1] = unit([0.0, 2.0])
    expected[3] = unit([3.0, 4.0])
    np.testing.assert_allclose(aligned.matrix, expected, rtol=1e-6)
    assert aligned.matrix.dtype == np.float32
    assert aligned.available.tolist() == [False, True, False, True, False]
    assert aligned.num_missing == 2
    assert (aligned.name, aligned.source, aligned.dim, aligned.num_items) == ("text", "f.npz", 2, 4)
    assert "2 of 4 items have a feature" in caplog.text
    assert "1 feature rows for ids not in the dataset ignored" in caplog.text


def test_available_rows_have_unit_norm_and_others_are_zero() -> None:
    rng = np.random.default_rng(0)
    aligned = align_features(np.array([10, 20, 40]), rng.normal(size=(3, 8)) * 7, ITEM_IDS, source="x")

    norms = np.linalg.norm(aligned.matrix, axis=1)
    np.testing.assert_allclose(norms[aligned.available], 1.0, rtol=1e-6)
    assert np.all(norms[~aligned.available] == 0)
    assert not aligned.available[0]


def test_zero_rows_are_unavailable_and_counted() -> None:
    aligned = align_features(
        np.array([10, 20, 30, 40]), np.array([[1.0, 0], [0, 0], [0, 1.0], [2, 2]]), ITEM_IDS, source="x"
    )
    assert aligned.available.tolist() == [False, True, False, True, True]
    assert aligned.num_missing == 1
    assert np.all(aligned.matrix[2] == 0)


def test_integer_feature_ids_match_string_dataset_ids() -> None:
    item_ids = np.array(["", "10", "20"])
    aligned = align_features(np.array([20]), np.array([[1.0, 0.0]]), item_ids, source="x")
    assert aligned.available.tolist() == [False, False, True]


def test_row_ordered_matrix_maps_row_i_to_dense_item_i_plus_1() -> None:
    matrix = np.arange(1, 9, dtype=np.float32).reshape(4, 2)
    aligned = align_features(None, matrix, ITEM_IDS, source="m.npy")
    for row in range(4):
        np.testing.assert_allclose(aligned.matrix[row + 1], unit(matrix[row].tolist()), rtol=1e-6)
    assert aligned.num_missing == 0


def test_strict_mode_rejects_unknown_ids() -> None:
    with pytest.raises(FeatureFileError, match=r"f\.npz: 1 feature ids are not items.*99"):
        align_features(np.array([10, 99]), np.ones((2, 3)), ITEM_IDS, source="f.npz", strict=True)


# --------------------------------------------------------------------------------------------
# Bad files


def test_nan_rows_are_an_error_naming_the_ids(tmp_path: Path) -> None:
    path = save_features(
        tmp_path / "f.npz", np.array([10, 20, 30]), np.array([[1.0, 0], [np.nan, 1], [np.inf, 0]])
    )
    ids, matrix = load_features(path)
    with pytest.raises(FeatureFileError, match=r"f\.npz: 2 feature rows contain NaN or infinity.*\[20, 30\]"):
        align_features(ids, matrix, ITEM_IDS, source=str(path))


def test_npy_with_wrong_row_count_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(
        FeatureFileError, match=r"f\.npy: a matrix without ids has 3 rows but the dataset has 4 items"
    ):
        load_modality(f"image={path}", ITEM_IDS)


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    path = save_features(tmp_path / "f.npz", np.array([10, 20, 10]), np.ones((3, 2)))
    with pytest.raises(FeatureFileError, match=r"f\.npz: 1 item ids appear more than once, e.g. \[10\]"):
        load_modality(f"text={path}", ITEM_IDS)


def test_no_matching_ids_is_an_error(tmp_path: Path) -> None:
    path = save_features(tmp_path / "f.npz", np.array([1, 2, 3]), np.ones((3, 2)))
    with pytest.raises(
        FeatureFileError, match=r"f\.npz: none of the 3 feature ids is an item of the dataset"
    ):
        load_modality(f"text={path}", ITEM_IDS)


@pytest.mark.parametrize("name", ["f.csv", "f.pt", "f"])
def test_unknown_extension_is_an_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("1,2\n")
    with pytest.raises(FeatureFileError, match="unknown feature file type"):
        load_features(tmp_path / name)
    with pytest.raises(FeatureFileError, match="cannot write feature files"):
        save_features(tmp_path / name, np.array([1]), np.ones((1, 2)))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_features(tmp_path / "absent.npz")


def test_npz_without_expected_arrays_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, vectors=np.ones((2, 2)))
    with pytest.raises(FeatureFileError, match=r"missing array\(s\) ids, features.*found vectors"):
        load_features(path)


def test_corrupt_npz_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(
        CorruptFile, match=r"f\.npz: cannot read this \.npz feature file \(14 bytes, truncated"
    ):
        load_features(path)


def test_ids_and_rows_of_different_lengths_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, ids=np.array([1, 2, 3]), features=np.ones((2, 4)))
    with pytest.raises(FeatureFileError, match="expected one id per feature row"):
        load_features(path)


def test_string_ids_cannot_go_to_safetensors(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="write a .npz file instead"):
        save_features(tmp_path / "f.safetensors", np.array(["a", "b"]), np.ones((2, 2)))


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip_with_ids(tmp_path: Path, suffix: str) -> None:
    ids = np.array([40, 10, 20])
    features = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)

    path = save_features(tmp_path / f"features{suffix}", ids, features)
    loaded_ids, loaded = load_features(path)

    np.testing.assert_array_equal(loaded_ids, ids)
    np.testing.assert_array_equal(loaded, features)
    assert loaded.dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"features{suffix}"]  # no temp file left


def test_npz_round_trip_with_string_ids(tmp_path: Path) -> None:
    path = save_features(tmp_path / "f.npz", np.array(["b7", "a1"]), np.eye(2))
    ids, _ = load_features(path)
    assert ids.tolist() == ["b7", "a1"]
    aligned = load_modality(f"text={path}", np.array(["", "a1", "b7", "c3"]))
    assert aligned.available.tolist() == [False, True, True, False]


def test_npy_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    matrix = np.random.default_rng(2).normal(size=(4, 3))
    np.save(path, matrix)
    ids, loaded = load_features(path)
    assert ids is None
    np.testing.assert_allclose(loaded, matrix.astype(np.float32))
    assert load_modality(f"image={path}", ITEM_IDS).num_missing == 0


def test_safetensors_without_ids_is_row_ordered(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "f.safetensors"
    save_file({"features": np.ones((4, 3), dtype=np.float32)}, str(path))
    ids, matrix = load_features(path)
    assert ids is None and matrix.shape == (4, 3)
    assert load_modality(f"image={path}", ITEM_IDS).available.tolist() == [False] + [True] * 4


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    save_features(path, np.array([1]), np.ones((1, 2)))
    save_features(path, np.array([1, 2]), np.zeros((2, 3)))
    ids, matrix = load_features(path)
    assert ids.tolist() == [1, 2] and matrix.shape == (2, 3)


# --------------------------------------------------------------------------------------------
# Modality specs


def test_modality_spec_is_parsed() -> None:
    assert parse_modality_spec("text=features/a=b.npz") == ("text", Path("features/a=b.npz"))


@pytest.mark.parametrize("spec", ["features.npz", "=f.npz", "text=", "1text=f.npz", "my text=f.npz"])
def test_bad_modality_spec_is_an_error(spec: str) -> None:
    with pytest.raises(ValueError, match="expected NAME=FILE"):
        parse_modality_spec(spec)


def test_load_modality_names_the_modality(tmp_path: Path) -> None:
    path = save_features(tmp_path / "poster.npz", np.array([10, 30]), np.ones((2, 4)))
    aligned = load_modality(f"image={path}", ITEM_IDS)
    assert (aligned.name, aligned.source, aligned.num_missing) == ("image", str(path), 2)


def test_saved_file_gets_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = save_features(tmp_path / "f.npz", np.array([1]), np.ones((1, 2)))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_features(tmp_path / "f.npz", np.array([1]), np.ones((1, 2)))

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_features(path, np.array([1, 2]), np.zeros((2, 3)))

    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]
    assert load_features(path)[1].shape == (1, 2)
