"""Readers: format detection, parsing of every format, and error messages for bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feddmmr.data.readers import FORMATS, DataFormatError, detect_format, load_interactions

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real MovieLens files not found at {SHARED_DATA} (only present in the dev workspace)",
)

ML1M_LINES = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def assert_rows(interactions, users, items, times) -> None:
    assert interactions.users.tolist() == users
    assert interactions.items.tolist() == items
    if times is None:
        assert interactions.times is None
    else:
        assert interactions.times.tolist() == times


# --------------------------------------------------------------------------- MovieLens formats


def test_ml1m_folder_is_detected_and_parsed(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", ML1M_LINES)
    assert detect_format(tmp_path) == "ml-1m"
    interactions = load_interactions(tmp_path)
    assert_rows(interactions, [1, 1, 2], [1193, 661, 1193], [978300760, 978302109, 978298413])
    assert interactions.users.dtype == np.int64 and interactions.times.dtype == np.int64
    assert interactions.source == str(tmp_path / "ratings.dat")


def test_ml1m_gzipped_ratings_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat.gz", ML1M_LINES)
    assert load_interactions(tmp_path).items.tolist() == [1193, 661, 1193]


def test_folder_holding_a_single_movielens_subfolder(tmp_path: Path) -> None:
    write(tmp_path / "ml-1m" / "ratings.dat", ML1M_LINES)
    assert detect_format(tmp_path) == "ml-1m"
    assert len(load_interactions(tmp_path)) == 3
    assert len(load_interactions(tmp_path, "ml-1m")) == 3


def test_folder_holding_both_movielens_subfolders_is_ambiguous(tmp_path: Path) -> None:
    write(tmp_path / "ml-1m" / "ratings.dat", ML1M_LINES)
    write(tmp_path / "ml-100k" / "u.data", "1\t2\t3\t4\n")
    with pytest.raises(DataFormatError, match="both ml-1m/ and ml-100k/"):
        load_interactions(tmp_path)


def test_dat_file_with_double_colons_is_ml1m(tmp_path: Path) -> None:
    path = write(tmp_path / "some_ratings.dat", ML1M_LINES)
    assert detect_format(path) == "ml-1m"


def test_forced_ml1m_format_on_an_oddly_named_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings_users1-2.log.gz", ML1M_LINES)
    assert len(load_interactions(path, "ml-1m")) == 3


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "\n" + ML1M_LINES.replace("\n", "\n\n"))
    assert len(load_interactions(path)) == 3


def test_decimal_ratings_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::10::3.5::100\n2::20::4::200\n")
    assert_rows(load_interactions(path), [1, 2], [10, 20], [100, 200])


def test_ml100k_folder_and_file(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert detect_format(tmp_path) == "ml-100k"
    assert detect_format(tmp_path / "u.data") == "ml-100k"
    assert_rows(load_interactions(tmp_path), [196, 186], [242, 302], [881250949, 891717742])


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("a,b,c", "expected 4 fields separated by '::' (UserID::MovieID::Rating::Timestamp), got 'a,b,c'"),
        ("1:2::3::4", "expected 4 fields separated by '::'"),
        ("1\t2\t3\t4", "expected 4 fields separated by '::'"),
        ("1::2::3::4::5", "expected 4 fields separated by '::'"),
        ("1::abc::3::978300760", "MovieID 'abc' is not a non-negative integer"),
        ("1.0::2::3::978300760", "UserID '1.0' is not a non-negative integer"),
        ("1::2::3::97830x", "Timestamp '97830x' is not a non-negative integer"),
        ("1::2::five::978300760", "Rating 'five' is not a number"),
        ("1::2::3::99999999999999999999", "Timestamp '99999999999999999999' does not fit in 64 bits"),
        ("caf\xe9::2::3::4", "UserID 'café' is not a non-negative integer"),
    ],
)
def test_ml1m_bad_line_names_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    raw = (ML1M_LINES + line + "\n").encode("latin-1")  # ML files are ISO-8859-1
    path = write(tmp_path / "ratings.dat", raw)
    with pytest.raises(DataFormatError) as error:
        load_interactions(path)
    assert str(error.value).startswith(f"{path}:4: ")
    assert problem in str(error.value)


def test_ml1m_first_line_too_wide(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "1::2::3::4::5\n" + ML1M_LINES)
    with pytest.raises(DataFormatError, match=r"ratings\.dat:1: expected 4 fields separated by '::'"):
        load_interactions(path)


def test_ml100k_wrong_separator(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186 302 3 891717742\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: expected 4 fields separated by tabs"):
        load_interactions(path)


def test_empty_ratings_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.dat", "\n\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat: no interactions"):
        load_interactions(path, "ml-1m")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match="not a valid gzip file"):
        load_interactions(path, "ml-1m")


# --------------------------------------------------------------------------- plain text formats


def test_sequences_file(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", "7 30 10 20\n\n3 5 6\n")
    assert detect_format(path) == "sequences"
    assert_rows(load_interactions(path), [7, 7, 7, 3, 3], [30, 10, 20, 5, 6], None)


def test_gzipped_sequences_file(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt.gz", "7 30 10 20\n3 5 6\n")
    assert len(load_interactions(path)) == 5


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("1 2 3\n2,3,4\n", 2, "user '2,3,4' is not a non-negative integer"),
        ("1 2 3\n2 3,4\n", 2, "(commas are not separators here)"),
        ("1 2 3\n\n2 3 x4\n", 3, "item 'x4' is not a non-negative integer"),
        ("1 2 3\n2\n", 2, "user '2' has no items"),
        ("1 2 3\n2 5\n1 4\n", 3, "user 1 already has a line (1)"),
        ("1 2 3\n2 99999999999999999999\n", 2, "item '99999999999999999999' does not fit in 64 bits"),
    ],
)
def test_sequences_bad_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path / "seqs.txt", text)
    with pytest.raises(DataFormatError) as error:
        load_interactions(path, "sequences")
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert problem in str(error.value)


def test_bad_utf8_names_line_and_byte(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", b"1 2 3\n2 3 4\n3 \xff 5\n")
    with pytest.raises(DataFormatError) as error:
        load_interactions(path, "sequences")
    assert str(error.value).startswith(f"{path}:3: byte 0xff at column 3 is not valid UTF-8")


def test_bad_utf8_during_detection(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", b"1 2\n\xe9 3\n")
    with pytest.raises(DataFormatError, match=r"log\.txt:2: byte 0xe9"):
        load_interactions(path)


def test_empty_text_file(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", "")
    with pytest.raises(DataFormatError, match=r"seqs\.txt: no interactions"):
        load_interactions(path)
    with pytest.raises(DataFormatError, match=r"seqs\.txt: no interactions"):
        load_interactions(path, "sequences")


def test_user_item_with_and_without_timestamps(tmp_path: Path) -> None:
    with_times = write(tmp_path / "a.txt", "1 10 100\n1 11 101\n2 10 50\n")
    without_times = write(tmp_path / "b.txt", "1 10\n1 11\n\n2 10\n")
    assert detect_format(with_times) == "user-item"
    assert detect_format(without_times) == "user-item"
    assert_rows(load_interactions(with_times), [1, 1, 2], [10, 11, 10], [100, 101, 50])
    assert_rows(load_interactions(without_times), [1, 1, 2], [10, 11, 10], None)


def test_user_item_users_repeating_out_of_order_is_still_a_log(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", "1 10\n2 10\n1 11\n")
    assert detect_format(path) == "user-item"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (
            "1 10 100\n1 11\n",
            2,
            "expected 3 fields separated by whitespace (user item timestamp, as on line 1)",
        ),
        ("1 10\n1 11 5\n", 2, "expected 2 fields separated by whitespace"),
        ("1 10 100\n1 11 10:30\n", 2, "timestamp '10:30' is not a non-negative integer"),
        ("1 10\n1 b\n", 2, "item 'b' is not a non-negative integer"),
        ("\n1 10 100 5\n", 2, "expected 2 or 3 whitespace-separated fields (user item [timestamp])"),
    ],
)
def test_user_item_bad_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path / "log.txt", text)
    with pytest.raises(DataFormatError) as error:
        load_interactions(path, "user-item")
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert problem in str(error.value)


def test_undetectable_text_file_suggests_format(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", "1 10 5 100\n1 11 4 101\n")
    with pytest.raises(DataFormatError) as error:
        load_interactions(path)
    message = str(error.value)
    assert str(path) in message and "--format" in message
    assert all(name in message for name in FORMATS)


def test_unknown_folder_suggests_format(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(DataFormatError, match="--format") as error:
        load_interactions(tmp_path)
    assert "ml-1m, ml-100k, sequences, user-item, csv, parquet" in str(error.value)


def test_text_format_on_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="format 'sequences' needs a file, got a folder"):
        load_interactions(tmp_path, "sequences")


def test_forced_movielens_format_on_a_folder_without_ratings(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="expects a folder holding ratings.dat or ratings.dat.gz"):
        load_interactions(tmp_path, "ml-1m")


def test_unknown_format_name_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="unknown format 'tsv'"):
        load_interactions(tmp_path, "tsv")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_interactions(tmp_path / "absent.txt")


def test_columns_only_for_tables(tmp_path: Path) -> None:
    path = write(tmp_path / "seqs.txt", "1 2 3\n")
    with pytest.raises(ValueError, match="columns= only applies to csv and parquet"):
        load_interactions(path, columns={"user": "u"})


# --------------------------------------------------------------------------- csv and parquet


def test_csv_with_movielens_style_aliases(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n\n2,20,3.5,50\n")
    assert detect_format(path) == "csv"
    interactions = load_interactions(path)
    assert_rows(interactions, [1, 2], [10, 20], [100, 50])
    assert interactions.users.dtype == np.int64


def test_csv_string_ids_and_iso_datetimes(tmp_path: Path) -> None:
    text = "USER_ID,Item_Id,Time\nalice,sku-1,2003-02-28 17:49:50\nbob,sku-2,1970-01-01T00:01:40+00:00\n"
    interactions = load_interactions(write(tmp_path / "log.csv", text))
    assert_rows(interactions, ["alice", "bob"], ["sku-1", "sku-2"], [1046454590, 100])
    assert interactions.users.dtype.kind == "U"


def test_tsv_gz_without_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv.gz", "user\titem\n1\t10\n1\t11\n")
    assert detect_format(path) == "csv"
    assert_rows(load_interactions(path), [1, 1], [10, 11], None)


def test_csv_forced_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "customer,sku,ts\n1,10,5\n")
    interactions = load_interactions(path, columns={"user": "customer", "item": "sku", "time": "ts"})
    assert_rows(interactions, [1], [10], [5])
    with pytest.raises(DataFormatError, match=r"column 'client' \(given for user\) not found"):
        load_interactions(path, columns={"user": "client", "item": "sku"})
    with pytest.raises(ValueError, match="unknown keys"):
        load_interactions(path, columns={"rating": "x"})


def test_csv_missing_item_column_names_file_and_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user;item;timestamp\n1;2;3\n")
    with pytest.raises(DataFormatError) as error:
        load_interactions(path)
    message = str(error.value)
    assert message.startswith(f"{path}: no user column")
    assert "columns found: ['user;item;timestamp'] (read with separator ',')" in message


def test_csv_ambiguous_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user,user_id,item\n1,1,2\n")
    with pytest.raises(
        DataFormatError, match=r"several columns could be the user column: \['user', 'user_id'\]"
    ):
        load_interactions(path)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (
            "user,item,timestamp\n1,2,3\n1,3,yesterday\n",
            3,
            "timestamp 'yesterday' is neither an integer timestamp nor an ISO 8601",
        ),
        ("user,item,timestamp\n1,2,3\n\n1,,4\n", 4, "column 'item' is empty"),
        ("user,item,timestamp\n1,2,3\n1,3,\n", 3, "column 'timestamp' is empty"),
        ("user,item,time\n1,2,2020-01-01\n1,3,1577836800\n", 3, "time '1577836800' is an integer but"),
        (
            "user,item\n1,2\n99999999999999999999,3\n",
            3,
            "user '99999999999999999999' does not fit in 64 bits",
        ),
    ],
)
def test_csv_bad_value_names_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path / "log.csv", text)
    with pytest.raises(DataFormatError) as error:
        load_interactions(path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert problem in str(error.value)


def test_csv_with_header_only_or_nothing(tmp_path: Path) -> None:
    for text in ("user,item\n", ""):
        path = write(tmp_path / "log.csv", text)
        with pytest.raises(DataFormatError, match=r"log\.csv: no interactions"):
            load_interactions(path)


def test_csv_bad_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", b"user,item\n1,caf\xe9\n")
    with pytest.raises(DataFormatError, match=r"log\.csv:2: byte 0xe9 at column 6 is not valid UTF-8"):
        load_interactions(path)


def test_parquet_with_datetimes_and_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "UserID": [5, 6],
            "item": ["a", "b"],
            "Timestamp": pd.to_datetime(["1970-01-01 00:00:10", "1970-01-02"], format="ISO8601"),
        }
    ).to_parquet(path)
    assert detect_format(path) == "parquet"
    interactions = load_interactions(path)
    assert_rows(interactions, [5, 6], ["a", "b"], [10, 86400])
    assert interactions.users.dtype == np.int64


def test_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1.5, 2.0], "item": [1, 2]}).to_parquet(path)
    with pytest.raises(
        DataFormatError, match=r"row 1: column 'user' has type float64; expected integer or string ids"
    ):
        load_interactions(path)
    pd.DataFrame({"user": [1, 2], "product": [1, 2]}).to_parquet(path)
    with pytest.raises(DataFormatError, match=r"no item column.*columns found: \['user', 'product'\]"):
        load_interactions(path)
    pd.DataFrame({"user": [1, None], "item": ["x", "y"]}).to_parquet(path)
    with pytest.raises(DataFormatError, match=r"row 2: column 'user' is empty"):
        load_interactions(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match="not a readable Parquet file"):
        load_interactions(path)


# --------------------------------------------------------------------------- real MovieLens files


@pytest.fixture(scope="module")
def ml1m_sequences():
    return load_interactions(SHARED_DATA / "ml-1m" / "ml-1m_sequences.txt")


@needs_shared_data
def test_real_ml1m_sequences_file(ml1m_sequences) -> None:
    interactions = ml1m_sequences
    assert detect_format(SHARED_DATA / "ml-1m" / "ml-1m_sequences.txt") == "sequences"
    assert len(interactions) == 1_000_209
    assert len(np.unique(interactions.users)) == 6_040
    assert len(np.unique(interactions.items)) == 3_706
    assert interactions.times is None


@needs_shared_data
def test_real_ml1m_ratings_match_the_sequences_file(ml1m_sequences) -> None:
    ratings = load_interactions(SHARED_DATA / "ml-1m" / "ratings_users1-2999.dat.gz", "ml-1m")
    assert detect_format(SHARED_DATA / "ml-1m" / "ratings_users1-2999.dat.gz") == "ml-1m"
    assert len(ratings) == 487_650
    assert len(np.unique(ratings.users)) == 2_999
    assert len(np.unique(ratings.items)) == 3_615
    sequences = ml1m_sequences
    same_users = sequences.users <= 2_999
    # Same (user, item) pairs; only the order of timestamp ties may differ.
    pairs = lambda users, items: np.unique(users * 10_000 + items)  # noqa: E731
    assert np.array_equal(
        pairs(ratings.users, ratings.items),
        pairs(sequences.users[same_users], sequences.items[same_users]),
    )


@needs_shared_data
def test_real_ml100k_folder() -> None:
    interactions = load_interactions(SHARED_DATA / "ml-100k")
    assert len(interactions) == 100_000
    assert len(np.unique(interactions.users)) == 943
    assert len(np.unique(interactions.items)) == 1_682


# --------------------------------------------------------------------------- the id rule (docs/DATA.md, "Ids")


@pytest.mark.parametrize(
    "cell, what",
    [
        ("NaN", "a missing-value marker"),
        ("null", "a missing-value marker"),
        ("N/A", "a missing-value marker"),
        ("1.0", "a decimal number"),
        ("2e3", "a decimal number"),
    ],
)
def test_a_csv_cell_that_is_no_id_is_an_error_not_an_item(tmp_path: Path, cell: str, what: str) -> None:
    path = write(tmp_path / "log.csv", f"user,item\n1,10\n1,{cell}\n2,11\n")
    with pytest.raises(DataFormatError, match=f"log.csv:3: item '{cell}' is {what}"):
        load_interactions(path)


def test_integer_ids_are_read_by_value_in_every_format_and_labels_as_text(tmp_path: Path) -> None:
    """0007 is item 7 wherever every id is an integer (text formats, CSV, Parquet strings); in a
    column of labels it is the label '0007', not '7'."""
    as_text = load_interactions(write(tmp_path / "log.txt", "1 0007\n1 7\n2 8\n"), format="user-item")
    as_csv = load_interactions(write(tmp_path / "log.csv", "user,item\n1,0007\n1,7\n2,8\n"))
    frame = tmp_path / "log.parquet"
    pd.DataFrame({"user": ["1", "1", "2"], "item": ["0007", "7", "8"]}).to_parquet(frame)
    as_parquet = load_interactions(frame)
    for interactions in (as_text, as_csv, as_parquet):
        assert interactions.items.tolist() == [7, 7, 8] and interactions.items.dtype == np.int64
    labels = load_interactions(write(tmp_path / "labels.csv", "user,item\n1,0007\n1,7\n2,sku-8\n"))
    assert labels.items.tolist() == ["0007", "7", "sku-8"]


def test_a_parquet_string_column_with_a_missing_marker_is_an_error(tmp_path: Path) -> None:
    frame = tmp_path / "log.parquet"
    pd.DataFrame({"user": [1, 2], "item": ["sku-1", "nan"]}).to_parquet(frame)
    with pytest.raises(DataFormatError, match="row 2: item 'nan' is a missing-value marker"):
        load_interactions(frame)


def test_every_format_has_one_reader() -> None:
    from feddmmr.data.readers import FORMATS, READERS

    assert tuple(READERS) == FORMATS
