"""Readers that turn interaction files into `Interactions`.

Supported formats (see `FORMATS`):

- ``ml-1m``: the official MovieLens-1M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``,
  ISO-8859-1), given as the file itself or a folder holding it.
- ``ml-100k``: the official MovieLens-100K ``u.data`` (tab-separated ``user item rating
  timestamp``), given as the file or its folder.
- ``sequences``: one user per line, ``user item1 item2 ...``, oldest item first.
- ``user-item``: one interaction per line, ``user item [timestamp]``.
- ``csv`` / ``parquet``: a table with user, item and optional timestamp columns.

Every integer format is parsed with a vectorised fast path; only when that fails (or the file holds
characters the fast path could misread) does a line-by-line scan run, to name the offending line.
Any ``.gz`` text file is decompressed transparently.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feddmmr.data.types import Interactions
from feddmmr.errors import InputError

FORMATS = ("ml-1m", "ml-100k", "sequences", "user-item", "csv", "parquet")

ML1M_RATINGS_NAMES = ("ratings.dat", "ratings.dat.gz")
ML100K_RATINGS_NAME = "u.data"
ML1M_LAYOUT = "UserID::MovieID::Rating::Timestamp"
ML100K_LAYOUT = "user<TAB>item<TAB>rating<TAB>timestamp"
SEQUENCES_LAYOUT = "user item1 item2 ..."

# How many leading lines format detection looks at: enough to see users repeat in a log.
DETECTION_LINES = 1000

# Column-name aliases for csv/parquet, compared case-insensitively.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid"),
    "item": ("item", "item_id", "itemid", "movie_id", "movieid"),
    "time": ("time", "timestamp"),
}

# Bytes outside these sets send a file through the line-by-line validator before the fast path:
# pandas' int64 parsing would otherwise accept things like "1.0" for an id.
_ML1M_UNEXPECTED = re.compile(rb"[^0-9:\r\n]")
_ML100K_UNEXPECTED = re.compile(rb"[^0-9\t\r\n]")
_WHITESPACE_INTS_UNEXPECTED = re.compile(r"[^0-9\s]", re.ASCII)  # pandas' \s is ASCII too
_NON_NEGATIVE_INT = re.compile(r"[0-9]+")
_INT = r"-?[0-9]+"
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?")
_INT64_MAX = int(np.iinfo(np.int64).max)
# Never an id (docs/DATA.md, "Ids"): what pandas, R or a database write for a missing value, and
# decimal numbers (an integer column that went through floats). Either would become an item.
_MISSING_MARKER = r"(?i)nan|na|n/a|<na>|null|none"
_DECIMAL = r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?[0-9]+[eE][+-]?[0-9]+"


class DataFormatError(InputError):
    """An input file does not match its format; the message names file, line, value and fix. It
    quotes at most `MESSAGE_LIMIT` characters, however long the offending line or value."""

    MESSAGE_LIMIT = 500

    def __init__(self, message: str) -> None:
        if len(message) > self.MESSAGE_LIMIT:
            message = (
                f"{message[: self.MESSAGE_LIMIT]}... ({len(message) - self.MESSAGE_LIMIT} more characters)"
            )
        super().__init__(message)


def load_interactions(
    path: str | Path,
    format: str | None = None,
    *,
    columns: Mapping[str, str] | None = None,
) -> Interactions:
    """Read an interaction log from a file or a folder.

    `format` is one of `FORMATS`; None detects it (see `detect_format`). `columns` forces the
    csv/parquet column names, e.g. ``{"user": "customer", "item": "sku", "time": "ts"}``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise DataFormatError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if columns is not None and format not in ("csv", "parquet"):
        raise ValueError(f"columns= only applies to csv and parquet, not to format {format!r}")
    return READERS[format](_resolve_file(path, format), columns)


# --------------------------------------------------------------------------- format detection


def detect_format(path: str | Path) -> str:
    """Guess the format of a file or folder; raise `DataFormatError` when it cannot tell."""
    path = Path(path)
    if path.is_dir():
        return _detect_folder_format(path)
    name = _name_without_gz(path)
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name == ML100K_RATINGS_NAME:
        return "ml-100k"
    if name.endswith(".dat") and "::" in _first_line_latin1(path):
        return "ml-1m"
    return _detect_text_format(path)


def _detect_folder_format(folder: Path) -> str:
    dataset_folder = _movielens_folder(folder)
    if dataset_folder is None:
        raise _unknown_format(
            folder, f"a folder with neither {ML1M_RATINGS_NAMES[0]} nor {ML100K_RATINGS_NAME}"
        )
    return "ml-1m" if _ratings_file(dataset_folder, ML1M) is not None else "ml-100k"


def _movielens_folder(folder: Path) -> Path | None:
    """The folder itself when it holds MovieLens ratings, else its single ml-1m/ or ml-100k/."""
    if any(_ratings_file(folder, layout) is not None for layout in MOVIELENS.values()):
        return folder
    subfolders = [folder / name for name in ("ml-1m", "ml-100k") if (folder / name).is_dir()]
    if len(subfolders) == 1:
        return _movielens_folder(subfolders[0])
    if len(subfolders) > 1:
        raise DataFormatError(f"{folder}: holds both ml-1m/ and ml-100k/; point at one of them instead")
    return None


def _ratings_file(folder: Path, layout: MovieLensLayout) -> Path | None:
    return next((folder / name for name in layout.ratings_names if (folder / name).is_file()), None)


def _detect_text_format(path: Path) -> str:
    """Tell a sequences file (each user once) from a user-item log (users repeat)."""
    lines = _head_lines_utf8(path, DETECTION_LINES)
    if not lines:
        raise DataFormatError(f"{path}: no interactions (the file is empty or only blank lines)")
    fields = [line.split() for line in lines]
    users = [line_fields[0] for line_fields in fields]
    if len(set(users)) == len(users):
        return "sequences"
    if all(len(line_fields) in (2, 3) for line_fields in fields):
        return "user-item"
    field_counts = sorted({len(line_fields) for line_fields in fields})
    raise _unknown_format(
        path,
        f"a text file whose first field repeats across lines (so not one user per line) but whose "
        f"lines have {field_counts} whitespace-separated fields (a user-item log has 2 or 3)",
    )


def _unknown_format(path: Path, what: str) -> DataFormatError:
    return DataFormatError(
        f"{path}: cannot tell the format of {what}; expected one of {', '.join(FORMATS)}. "
        f"Pass the format explicitly (--format / format=)."
    )


def _resolve_file(path: Path, format: str) -> Path:
    """The file to read for `format`: `path` itself, or the ratings file inside a folder."""
    if path.is_file():
        return path
    if format not in MOVIELENS:
        raise DataFormatError(f"{path}: format {format!r} needs a file, got a folder")
    layout = MOVIELENS[format]
    ratings = _ratings_file(_movielens_folder(path) or path, layout)
    if ratings is None:
        raise DataFormatError(
            f"{path}: format {format!r} expects a folder holding {' or '.join(layout.ratings_names)}"
        )
    return ratings


# --------------------------------------------------------------------------- raw text access


def _name_without_gz(path: Path) -> str:
    name = path.name.lower()
    return name[: -len(".gz")] if name.endswith(".gz") else name


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as stream:
            return stream.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(f"{path}: not a valid gzip file ({error})") from error


def _first_line_latin1(path: Path) -> str:
    """The first non-blank line ("" if none)."""
    try:
        with _open_binary(path) as stream:
            for raw_line in stream:
                if raw_line.strip():
                    return raw_line.decode("latin-1")
            return ""
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(f"{path}: not a valid gzip file ({error})") from error


def _head_lines_utf8(path: Path, count: int) -> list[str]:
    """The first `count` non-blank lines, decoded as UTF-8."""
    head: list[bytes] = []
    try:
        with _open_binary(path) as stream:
            for raw_line in stream:
                head.append(raw_line)
                if len(head) >= count:
                    break
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(f"{path}: not a valid gzip file ({error})") from error
    text = _decode_utf8(b"".join(head), path)
    return [line for _, line in _numbered_lines(text)]


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        bad_byte = raw[error.start]
        raise DataFormatError(
            f"{path}:{line_number}: byte 0x{bad_byte:02x} at column {column} is not valid UTF-8; "
            f"expected UTF-8 text (convert it first, e.g. `iconv -f latin1 -t utf-8`)"
        ) from error


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line; numbering matches pandas'."""
    for index, line in enumerate(text.split("\n")):
        line = line.rstrip("\r")
        if line.strip():
            yield index + 1, line


def _raise_first_bad_line(text: str, path: Path, check_line: Callable[[str], str | None]) -> None:
    """Raise `DataFormatError` for the first line `check_line` rejects; return if none is bad."""
    for line_number, line in _numbered_lines(text):
        problem = check_line(line)
        if problem is not None:
            raise DataFormatError(f"{path}:{line_number}: {problem}")


def _no_interactions(path: Path) -> DataFormatError:
    return DataFormatError(f"{path}: no interactions (the file is empty or only blank lines)")


# --------------------------------------------------------------------------- field checks


def _check_fields(
    fields: list[str], names: tuple[str, ...], separator: str, layout: str, line: str
) -> str | None:
    """Describe what is wrong with one line's fields, or None. A "Rating" may be a decimal."""
    if len(fields) != len(names):
        return f"expected {len(names)} fields separated by {separator} ({layout}), got {line!r}"
    for name, value in zip(names, fields):
        if name == "Rating":
            problem = None if _NUMBER.fullmatch(value) else f"Rating {value!r} is not a number"
        else:
            problem = _integer_problem(name, value)
        if problem is not None:
            return f"{problem} ({layout}), in line {line!r}"
    return None


def _integer_problem(name: str, value: str) -> str | None:
    if not _NON_NEGATIVE_INT.fullmatch(value):
        return f"{name} {value!r} is not a non-negative integer"
    if int(value) > _INT64_MAX:
        return f"{name} {value!r} does not fit in 64 bits"
    return None


def _parse_int_columns(
    raw: bytes,
    path: Path,
    *,
    separator: str,
    field_count: int,
    keep: tuple[int, ...],
    encoding: str,
    check_line: Callable[[str], str | None],
) -> list[np.ndarray]:
    """Vectorised parse of a fixed-width integer table; the scan names the line if it fails.

    `separator` is the file's: "::", a single character, or r"\\s+". Columns not in `keep` are
    not converted to integers (the MovieLens rating, which nothing downstream uses). `raw` is
    decoded with `encoding` only to find the bad line when parsing fails.
    """
    table = raw
    if separator == "::":
        # pandas' fast C engine only takes one-character separators (its python engine is ~10x
        # slower). Lines that reach this point hold no tab: the callers' checks reject them.
        table, separator = raw.replace(b"::", b"\t"), "\t"
    try:
        # No `names=`: with names, pandas silently turns surplus fields into an index or drops
        # them. Without, a line longer than the first is a ParserError and a shorter one leaves
        # NA in an int64 column (ValueError); a first line of the wrong width shows in the shape.
        frame = pd.read_csv(
            io.BytesIO(table),
            sep=separator,
            header=None,
            dtype={column: "int64" for column in keep},
            engine="c",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError as error:
        raise _no_interactions(path) from error
    except (ValueError, OverflowError, pd.errors.ParserError) as error:
        _raise_first_bad_line(raw.decode(encoding), path, check_line)
        raise DataFormatError(f"{path}: could not parse ({error})") from error
    if frame.shape[1] != field_count:
        _raise_first_bad_line(raw.decode(encoding), path, check_line)
        raise DataFormatError(f"{path}: expected {field_count} columns, found {frame.shape[1]}")
    if frame.empty:
        raise _no_interactions(path)
    return [frame[column].to_numpy(dtype=np.int64) for column in keep]


# --------------------------------------------------------------------------- MovieLens


@dataclass(frozen=True)
class MovieLensLayout:
    """One MovieLens ratings file's layout: its names, its separator and its four columns."""

    ratings_names: tuple[str, ...]  # the file's names in a download's folder, by preference
    separator: str
    separator_name: str  # for error messages
    columns: tuple[str, str, str, str]
    layout: str
    unexpected: re.Pattern  # bytes that send the file through the line-by-line validator


ML1M = MovieLensLayout(
    ML1M_RATINGS_NAMES,
    "::",
    "'::'",
    ("UserID", "MovieID", "Rating", "Timestamp"),
    ML1M_LAYOUT,
    _ML1M_UNEXPECTED,
)
ML100K = MovieLensLayout(
    (ML100K_RATINGS_NAME,),
    "\t",
    "tabs",
    ("user", "item", "Rating", "timestamp"),
    ML100K_LAYOUT,
    _ML100K_UNEXPECTED,
)
MOVIELENS = {"ml-1m": ML1M, "ml-100k": ML100K}


def _read_movielens(path: Path, layout: MovieLensLayout) -> Interactions:
    raw = _read_bytes(path)

    def check_line(line: str) -> str | None:
        return _check_fields(
            line.split(layout.separator), layout.columns, layout.separator_name, layout.layout, line
        )

    if layout.unexpected.search(raw):
        # Decimal ratings (ML-10M style) are fine, anything else is reported here.
        _raise_first_bad_line(raw.decode("latin-1"), path, check_line)
    users, items, times = _parse_int_columns(
        raw,
        path,
        separator=layout.separator,
        field_count=4,
        keep=(0, 1, 3),
        encoding="latin-1",  # the MovieLens files are ISO-8859-1: decoding never fails
        check_line=check_line,
    )
    return Interactions(users=users, items=items, times=times, source=str(path))


# --------------------------------------------------------------------------- plain text formats


def _read_user_item(path: Path) -> Interactions:
    raw = _read_bytes(path)
    text = _decode_utf8(raw, path)
    first = next(_numbered_lines(text), None)
    if first is None:
        raise _no_interactions(path)
    first_line_number, first_line = first
    field_count = len(first_line.split())
    if field_count not in (2, 3):
        raise DataFormatError(
            f"{path}:{first_line_number}: expected 2 or 3 whitespace-separated fields "
            f"(user item [timestamp]), got {first_line!r}"
        )
    names = ("user", "item", "timestamp")[:field_count]
    # Line 1 fixes whether there are timestamps: they are given on every line or on none.
    layout = f"{' '.join(names)}, as on line {first_line_number}"

    def check_line(line: str) -> str | None:
        return _check_fields(line.split(), names, "whitespace", layout, line)

    if _WHITESPACE_INTS_UNEXPECTED.search(text):
        _raise_first_bad_line(text, path, check_line)
    columns = _parse_int_columns(
        raw,
        path,
        separator=r"\s+",
        field_count=field_count,
        keep=tuple(range(field_count)),
        encoding="utf-8",
        check_line=check_line,
    )
    times = columns[2] if field_count == 3 else None
    return Interactions(users=columns[0], items=columns[1], times=times, source=str(path))


def _read_sequences(path: Path) -> Interactions:
    text = _decode_utf8(_read_bytes(path), path)
    if _WHITESPACE_INTS_UNEXPECTED.search(text):
        _raise_first_bad_line(text, path, _check_sequence_line)
    user_tokens: list[str] = []
    line_numbers: list[int] = []
    lengths: list[int] = []
    item_tokens: list[str] = []
    for line_number, line in _numbered_lines(text):
        fields = line.split()
        if len(fields) < 2:
            raise DataFormatError(
                f"{path}:{line_number}: user {fields[0]!r} has no items; "
                f"expected '{SEQUENCES_LAYOUT}' on each line"
            )
        user_tokens.append(fields[0])
        line_numbers.append(line_number)
        lengths.append(len(fields) - 1)
        item_tokens.extend(fields[1:])
    if not user_tokens:
        raise _no_interactions(path)
    # Every token is now ASCII digits, so the conversion below is exact (or overflows).
    try:
        users = np.array(user_tokens).astype(np.int64)
        items = np.array(item_tokens).astype(np.int64)
    except OverflowError as error:
        _raise_first_bad_line(text, path, _check_sequence_line)
        raise DataFormatError(f"{path}: {error}") from error
    _reject_repeated_users(users, np.array(line_numbers), path)
    return Interactions(users=np.repeat(users, lengths), items=items, times=None, source=str(path))


def _check_sequence_line(line: str) -> str | None:
    for position, token in enumerate(line.split()):
        problem = _integer_problem("user" if position == 0 else "item", token)
        if problem is not None:
            hint = " (commas are not separators here)" if "," in token else ""
            return f"{problem}; expected whitespace-separated integer ids '{SEQUENCES_LAYOUT}'{hint}"
    return None


def _reject_repeated_users(users: np.ndarray, line_numbers: np.ndarray, path: Path) -> None:
    """A sequences file holds each user once; a repeat is almost surely a different format."""
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    repeats = np.flatnonzero(sorted_users[1:] == sorted_users[:-1])
    if repeats.size == 0:
        return
    second_lines = line_numbers[order[repeats + 1]]
    first_repeat = int(np.argmin(second_lines))
    earlier_line = line_numbers[order[repeats[first_repeat]]]
    raise DataFormatError(
        f"{path}:{second_lines[first_repeat]}: user {sorted_users[repeats[first_repeat]]} already "
        f"has a line ({earlier_line}); a sequences file has one line per user "
        f"('{SEQUENCES_LAYOUT}'). For one interaction per line use format 'user-item'."
    )


# --------------------------------------------------------------------------- tables


def _read_csv(path: Path, columns: Mapping[str, str] | None) -> Interactions:
    text = _decode_utf8(_read_bytes(path), path)
    separator = "\t" if _name_without_gz(path).endswith(".tsv") else ","
    try:
        # Everything as strings: ids may be integers or labels, timestamps integers or dates.
        # Blank lines are kept (then dropped below) so that row i is line i + 2.
        frame = pd.read_csv(
            io.StringIO(text),
            sep=separator,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError as error:
        raise _no_interactions(path) from error
    except pd.errors.ParserError as error:
        raise DataFormatError(f"{path}: {error}") from error
    frame = frame[(frame != "").any(axis=1)]
    if frame.empty:
        raise _no_interactions(path)
    names = _resolve_columns(list(frame.columns), columns, path, f" (read with separator {separator!r})")

    def locate(row: int) -> str:
        return f"{path}:{int(frame.index[row]) + 2}"  # the header is line 1

    users = _string_ids(frame[names["user"]], names["user"], locate)
    items = _string_ids(frame[names["item"]], names["item"], locate)
    times = None
    if names["time"] is not None:
        times = _string_times(frame[names["time"]], names["time"], locate)
    return Interactions(users=users, items=items, times=times, source=str(path))


def _read_parquet(path: Path, columns: Mapping[str, str] | None) -> Interactions:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise DataFormatError(f"{path}: not a readable Parquet file ({error})") from error
    if frame.empty:
        raise _no_interactions(path)
    frame = frame.reset_index(drop=True)
    names = _resolve_columns([str(column) for column in frame.columns], columns, path, "")

    def locate(row: int) -> str:
        return f"{path}: row {row + 1}"  # parquet has no lines

    users = _typed_ids(frame[names["user"]], names["user"], locate)
    items = _typed_ids(frame[names["item"]], names["item"], locate)
    times = None
    if names["time"] is not None:
        times = _typed_times(frame[names["time"]], names["time"], locate)
    return Interactions(users=users, items=items, times=times, source=str(path))


def _resolve_columns(
    found: list[str], forced: Mapping[str, str] | None, path: Path, hint: str
) -> dict[str, str | None]:
    """Map the roles user/item/time to column names (time may be None)."""
    forced = dict(forced or {})
    unknown_roles = set(forced) - set(COLUMN_ALIASES)
    if unknown_roles:
        raise ValueError(
            f"columns= has unknown keys {sorted(unknown_roles)}; expected {sorted(COLUMN_ALIASES)}"
        )
    resolved: dict[str, str | None] = {}
    for role, aliases in COLUMN_ALIASES.items():
        if role in forced:
            if forced[role] not in found:
                raise DataFormatError(
                    f"{path}: column {forced[role]!r} (given for {role}) not found; "
                    f"columns found: {found}{hint}"
                )
            resolved[role] = forced[role]
            continue
        matches = [column for column in found if column.strip().lower() in aliases]
        if len(matches) > 1:
            raise DataFormatError(
                f"{path}: several columns could be the {role} column: {matches}; "
                f"choose one with columns={{'{role}': ...}}"
            )
        if not matches and role != "time":
            raise DataFormatError(
                f"{path}: no {role} column; expected one named {' / '.join(aliases)} "
                f"(any case), columns found: {found}{hint}. Name it with columns={{'{role}': ...}}"
            )
        resolved[role] = matches[0] if matches else None
    return resolved


def _reject_missing(missing: np.ndarray, column: str, locate: Callable[[int], str]) -> None:
    if missing.any():
        row = int(np.argmax(missing))
        raise DataFormatError(
            f"{locate(row)}: column {column!r} is empty; every row needs a value "
            f"({int(missing.sum())} rows lack one)"
        )


def _string_ids(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    """int64 when every id is an integer, else the ids as labels (strings)."""
    _reject_missing((values == "").to_numpy(), column, locate)
    if values.str.fullmatch(_INT).all():
        return _non_negative(_to_int64(values, column, locate), column, locate)
    return _labels(values, column, locate)


def _labels(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    """A column of labels, compared as text; a missing-value marker or a decimal number in it is an
    error, not an item."""
    for pattern, what in ((_MISSING_MARKER, "a missing-value marker"), (_DECIMAL, "a decimal number")):
        bad = values.str.fullmatch(pattern).to_numpy(dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataFormatError(
                f"{locate(row)}: {column} {values.iloc[row]!r} is {what}, not an id ({int(bad.sum())} rows hold "
                f"one); an id is an integer (then every id of the column is) or a label that is not a number "
                f'(docs/DATA.md, "Ids")'
            )
    return np.asarray(values.to_numpy(), dtype=str)


def _non_negative(ids: np.ndarray, column: str, locate: Callable[[int], str]) -> np.ndarray:
    """Integer ids are non-negative in every format (as in MovieLens and the text formats)."""
    negative = ids < 0
    if negative.any():
        row = int(np.argmax(negative))
        raise DataFormatError(
            f"{locate(row)}: {column} {int(ids[row])} is not a non-negative integer "
            f"({int(negative.sum())} rows hold a negative id); integer ids are >= 0 in every format"
        )
    return ids


def _to_int64(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    try:
        return values.to_numpy().astype(np.int64)
    except OverflowError as error:
        too_large = values.map(lambda value: abs(int(value)) > _INT64_MAX).to_numpy(dtype=bool)
        row = int(np.argmax(too_large))
        raise DataFormatError(
            f"{locate(row)}: {column} {values.iloc[row]!r} does not fit in 64 bits"
        ) from error


def _string_times(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    """Integer timestamps as they are; ISO 8601 date-times as int64 seconds since the epoch.

    A column holds one kind or the other: mixing them would compare seconds with dates.
    """
    _reject_missing((values == "").to_numpy(), column, locate)
    is_integer = values.str.fullmatch(_INT).to_numpy(dtype=bool)
    if is_integer.all():
        return _to_int64(values, column, locate)
    parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
    unparsed = parsed.isna().to_numpy() & ~is_integer
    if unparsed.any():
        row = int(np.argmax(unparsed))
        raise DataFormatError(
            f"{locate(row)}: {column} {values.iloc[row]!r} is neither an integer timestamp nor "
            f"an ISO 8601 date-time (e.g. 2003-02-28 17:49:50)"
        )
    if is_integer.any():
        first_integer = int(np.argmax(is_integer))
        first_date = int(np.argmax(~is_integer))
        raise DataFormatError(
            f"{locate(first_integer)}: {column} {values.iloc[first_integer]!r} is an integer "
            f"but {locate(first_date)} holds a date-time; use one kind for the whole column"
        )
    return _datetimes_to_seconds(parsed)


def _datetimes_to_seconds(values: pd.Series) -> np.ndarray:
    if values.dt.tz is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.to_numpy().astype("datetime64[s]").astype(np.int64)


def _typed_ids(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    _reject_missing(values.isna().to_numpy(), column, locate)
    if pd.api.types.is_integer_dtype(values.dtype):
        return _non_negative(values.to_numpy(dtype=np.int64), column, locate)
    if pd.api.types.is_string_dtype(values.dtype) and values.map(type).eq(str).all():
        if values.str.fullmatch(_INT).all():  # integers written as text: by value, as in every format
            return _non_negative(_to_int64(values, column, locate), column, locate)
        return _labels(values, column, locate)
    raise DataFormatError(
        f"{locate(0)}: column {column!r} has type {values.dtype}; expected integer or string ids"
    )


def _typed_times(values: pd.Series, column: str, locate: Callable[[int], str]) -> np.ndarray:
    _reject_missing(values.isna().to_numpy(), column, locate)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _datetimes_to_seconds(values)
    if pd.api.types.is_string_dtype(values.dtype):
        return _string_times(values.astype(str), column, locate)
    raise DataFormatError(
        f"{locate(0)}: column {column!r} has type {values.dtype}; expected integer timestamps or date-times"
    )


# Each format's reader: (the file, csv/parquet's forced column names) -> the interactions.
READERS: dict[str, Callable[[Path, Mapping[str, str] | None], Interactions]] = {
    "ml-1m": lambda file, columns: _read_movielens(file, ML1M),
    "ml-100k": lambda file, columns: _read_movielens(file, ML100K),
    "sequences": lambda file, columns: _read_sequences(file),
    "user-item": lambda file, columns: _read_user_item(file),
    "csv": _read_csv,
    "parquet": _read_parquet,
}
