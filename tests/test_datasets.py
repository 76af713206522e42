"""Dataset adapters, format detection and landing: fixtures are written in each exact source layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dagster_betag.datasets as datasets
from dagster_betag.datasets import (
    LANDING_SCHEMAS,
    DatasetError,
    LandedDataset,
    detect_format,
    read_dataset,
    read_manifest,
    source_hashes,
    write_landing,
)
from dagster_betag.files import DiskFullError

SHARED_ML_LATEST_SMALL = Path(__file__).parents[2] / "shared/data/ml-latest-small"

MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
11,"American President, The (1995)",Comedy|Drama|Romance
58,"Postman, The (Postino, Il) (1994)",Comedy|Drama|Romance
1000,"Atalante, L' (1934)",Drama
5000,Babylon 5,(no genres listed)
"""
RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1, 11 ,3.5,964981247
2,58,5.0,964982224
"""
TAGS_CSV = """userId,movieId,tag,timestamp
2,1,Pixar,1445714994
2,11,"politics, romance",1445714996
"""


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (text as UTF-8, bytes as they are) into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


def attributes(dataset: LandedDataset, item_id: str, name: str) -> list[str]:
    rows = dataset.item_attributes.filter((pl.col("item_id") == item_id) & (pl.col("attribute_name") == name))
    return rows["attribute_value"].to_list()


def title(dataset: LandedDataset, item_id: str) -> str:
    return dataset.items.filter(pl.col("item_id") == item_id)["title"].item()


def assert_contract(dataset: LandedDataset) -> None:
    for name, frame in dataset.tables().items():
        assert frame.columns == list(LANDING_SCHEMAS[name])
        assert all(dtype == (pl.Int64 if col == "source_row" else pl.String) for col, dtype in frame.schema.items())


@pytest.fixture
def latest_dir(tmp_path: Path) -> Path:
    return write(
        tmp_path / "ml-latest-small", {"movies.csv": MOVIES_CSV, "ratings.csv": RATINGS_CSV, "tags.csv": TAGS_CSV}
    )


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    movies = (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Café Society, The (1995)::Drama\n"
        '3::"Great Performances" Cats (1998)::Musical\n'
    )
    ratings = "1::1::5::978300760\n1::2::3::978302109\n6040::3::4::956703932\n"
    return write(tmp_path / "ml-1m", {"movies.dat": movies.encode("latin-1"), "ratings.dat": ratings})


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Café, Le (1996)|02-Feb-1996||http://us.imdb.com/x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_GENRE = "".join(f"{name}|{index}\n" for index, name in enumerate(datasets.movielens.ML100K_GENRES)) + "\n"


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    u_data = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
    return write(tmp_path / "ml-100k", {"u.data": u_data, "u.item": U_ITEM.encode("latin-1"), "u.genre": U_GENRE})


# --- MovieLens adapters ------------------------------------------------------------------


def test_movielens_latest_maps_items_attributes_events_and_tags(latest_dir: Path) -> None:
    dataset = read_dataset(latest_dir)
    assert (dataset.name, dataset.format, dataset.source_dir) == ("ml-latest-small", "movielens-latest", latest_dir)
    assert_contract(dataset)
    assert dataset.items["item_id"].to_list() == ["1", "11", "58", "1000", "5000"]
    assert dataset.items["description"].null_count() == 5
    assert attributes(dataset, "1", "genre") == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert attributes(dataset, "5000", "genre") == []
    assert attributes(dataset, "5000", "year") == []
    assert attributes(dataset, "11", "original_title") == ["American President, The (1995)"]
    events = dataset.events
    assert events.row(1, named=True) == {
        "source_file": "ratings.csv", "source_row": 2, "user_id": "1", "item_id": "11",
        "event_at": "964981247", "event_type": "rating", "event_value": "3.5",
    }  # fmt: skip
    assert dataset.native_tags.select("item_id", "tag", "user_id", "tagged_at").rows() == [
        ("1", "Pixar", "2", "1445714994"),
        ("11", "politics, romance", "2", "1445714996"),
    ]


@pytest.mark.parametrize(
    ("item_id", "expected_title", "year"),
    [
        ("1", "Toy Story", "1995"),
        ("11", "The American President", "1995"),
        ("58", "The Postman (Il Postino)", "1994"),
        ("1000", "L'Atalante", "1934"),
        ("5000", "Babylon 5", None),
    ],
)
def test_titles_lose_the_year_and_regain_their_leading_article(
    latest_dir: Path, item_id: str, expected_title: str, year: str | None
) -> None:
    dataset = read_dataset(latest_dir)
    assert title(dataset, item_id) == expected_title
    assert attributes(dataset, item_id, "year") == ([year] if year else [])


def test_original_title_only_when_an_article_was_moved(latest_dir: Path) -> None:
    dataset = read_dataset(latest_dir)
    assert attributes(dataset, "58", "original_title") == ["Postman, The (Postino, Il) (1994)"]
    assert attributes(dataset, "5000", "original_title") == []
    assert attributes(dataset, "1", "original_title") == []  # only the year was removed


def test_tags_csv_is_optional(latest_dir: Path) -> None:
    (latest_dir / "tags.csv").unlink()
    dataset = read_dataset(latest_dir)
    assert dataset.native_tags.height == 0
    assert dataset.native_tags.columns == list(LANDING_SCHEMAS["native_tags"])


def assert_classic_movielens(dataset: LandedDataset, expected_format: str, titles: list[str]) -> None:
    """What the older MovieLens file sets (1M, 100K) must give like the others: their format
    detected, the landing contract, titles cleaned in file order, and Toy Story's genres."""
    assert dataset.format == expected_format
    assert_contract(dataset)
    assert dataset.items["title"].to_list() == titles
    assert attributes(dataset, "1", "genre") == ["Animation", "Children's", "Comedy"]


def test_movielens_1m_reads_latin1_double_colon_files(ml1m_dir: Path) -> None:
    dataset = read_dataset(ml1m_dir)
    assert_classic_movielens(dataset, "movielens-1m", ["Toy Story", "The Café Society", '"Great Performances" Cats'])
    assert dataset.events.select("user_id", "item_id", "event_at", "event_value").row(2) == (
        "6040", "3", "956703932", "4",
    )  # fmt: skip
    assert dataset.events["source_file"].unique().to_list() == ["ratings.dat"]
    assert dataset.native_tags.height == 0


def test_movielens_100k_uses_genre_flags_and_release_date(ml100k_dir: Path) -> None:
    dataset = read_dataset(ml100k_dir)
    assert_classic_movielens(dataset, "movielens-100k", ["Toy Story", "Le Café", "unknown"])
    assert attributes(dataset, "2", "genre") == ["Drama"]
    assert attributes(dataset, "267", "genre") == []  # only the "unknown" flag is set
    assert attributes(dataset, "1", "release_date") == ["01-Jan-1995"]
    assert attributes(dataset, "267", "release_date") == []
    assert dataset.events.select("user_id", "item_id", "event_at", "event_value").row(0) == (
        "196",
        "242",
        "881250949",
        "3",
    )


def test_movielens_100k_without_u_genre_uses_the_standard_names(ml100k_dir: Path) -> None:
    (ml100k_dir / "u.genre").unlink()
    assert attributes(read_dataset(ml100k_dir), "1", "genre") == ["Animation", "Children's", "Comedy"]


@pytest.mark.skipif(not SHARED_ML_LATEST_SMALL.is_dir(), reason="shared ml-latest-small not present")
def test_real_ml_latest_small() -> None:
    dataset = read_dataset(SHARED_ML_LATEST_SMALL)
    assert (dataset.items.height, dataset.events.height, dataset.native_tags.height) == (9742, 100836, 3683)
    toy_story = dataset.items.filter(pl.col("title") == "Toy Story")["item_id"].item()
    assert attributes(dataset, toy_story, "year") == ["1995"]
    assert len(attributes(dataset, toy_story, "genre")) == 5


# --- generic format ----------------------------------------------------------------------

ITEMS_CSV = """item_id,title,description,brand,color,native_tags
 A1 ,Wool socks,"Warm, soft socks",Acme,red|blue,cozy| warm |
A2,Mug,,,white,
"""
EVENTS_CSV = """user_id,item_id,timestamp,event_type,value
u1,A1,2024-01-02T03:04:05,purchase,2
u2,A2,1704164645,,
"""


def test_generic_csv_splits_attributes_and_native_tags(tmp_path: Path) -> None:
    dataset = read_dataset(write(tmp_path / "shop", {"items.csv": ITEMS_CSV, "events.csv": EVENTS_CSV}))
    assert dataset.format == "generic"
    assert_contract(dataset)
    assert dataset.items.select("item_id", "title", "description").rows() == [
        ("A1", "Wool socks", "Warm, soft socks"),
        ("A2", "Mug", None),
    ]
    assert dataset.item_attributes.select("item_id", "attribute_name", "attribute_value").rows() == [
        ("A1", "brand", "Acme"),
        ("A1", "color", "red"),
        ("A1", "color", "blue"),
        ("A2", "color", "white"),
    ]
    assert dataset.native_tags.select("item_id", "tag", "user_id").rows() == [
        ("A1", "cozy", None),
        ("A1", "warm", None),
    ]
    assert dataset.events.select("user_id", "item_id", "event_at", "event_type", "event_value").rows() == [
        ("u1", "A1", "2024-01-02T03:04:05", "purchase", "2"),
        ("u2", "A2", "1704164645", None, None),
    ]


def test_generic_parquet_turns_every_type_into_text(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    pl.DataFrame(
        {
            "item_id": [1, 2],
            "title": ["Wool socks", "Mug"],
            "price": [9.5, None],
            "sizes": [["S", "M"], []],
            "native_tags": ["cozy|warm", None],
        }
    ).write_parquet(folder / "items.parquet")
    pl.DataFrame(
        {
            "user_id": [7, 8],
            "item_id": [1, 2],
            "timestamp": [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 250000)],
        }
    ).write_parquet(folder / "events.parquet")
    dataset = read_dataset(folder)
    assert dataset.format == "generic"
    assert_contract(dataset)
    assert dataset.items.select("source_file", "source_row", "item_id", "title").row(1) == (
        "items.parquet",
        2,
        "2",
        "Mug",
    )
    assert dataset.item_attributes.select("item_id", "attribute_name", "attribute_value").rows() == [
        ("1", "price", "9.5"),
        ("1", "sizes", "S"),
        ("1", "sizes", "M"),
    ]
    assert dataset.native_tags["tag"].to_list() == ["cozy", "warm"]
    assert dataset.events["event_at"].to_list() == ["2024-01-02T03:04:05", "2024-01-02T03:04:05.250"]
    assert dataset.events["event_type"].null_count() == 2


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (pl.DataFrame({"item_id": ["1"], "title": ["x"], "blob": [b"\xff"]}), r"column 'blob' \(Binary\) cannot be"),
        (b"PAR1 not really parquet", r"^items.parquet is not a readable Parquet file"),
    ],
)
def test_unreadable_parquet_is_a_one_line_error(tmp_path: Path, items: pl.DataFrame | bytes, message: str) -> None:
    folder = write(tmp_path / "shop", {"events.csv": EVENTS_CSV})
    if isinstance(items, bytes):
        (folder / "items.parquet").write_bytes(items)
    else:
        items.write_parquet(folder / "items.parquet")
    assert re.search(message, one_line_error(folder))


def test_generic_refuses_both_csv_and_parquet(tmp_path: Path) -> None:
    folder = write(tmp_path / "shop", {"items.csv": ITEMS_CSV, "events.csv": EVENTS_CSV})
    pl.read_csv(folder / "items.csv").write_parquet(folder / "items.parquet")
    with pytest.raises(DatasetError, match=r"both items.csv and items.parquet"):
        read_dataset(folder)


# --- format detection --------------------------------------------------------------------


def test_detect_format(latest_dir: Path, ml1m_dir: Path, ml100k_dir: Path, tmp_path: Path) -> None:
    generic = write(tmp_path / "shop", {"items.csv": ITEMS_CSV, "events.csv": EVENTS_CSV})
    assert [detect_format(path) for path in (latest_dir, ml1m_dir, ml100k_dir, generic)] == [
        "movielens-latest", "movielens-1m", "movielens-100k", "generic",
    ]  # fmt: skip


def test_detect_format_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"movielens-latest dataset but lacks ratings.csv"):
        detect_format(write(tmp_path / "half", {"movies.csv": MOVIES_CSV}))


def test_unrecognised_folder_and_unknown_format(tmp_path: Path, latest_dir: Path) -> None:
    with pytest.raises(DatasetError, match="cannot tell the format"):
        detect_format(write(tmp_path / "other", {"notes.txt": "hello"}))
    with pytest.raises(DatasetError, match="unknown dataset format 'imdb'"):
        read_dataset(latest_dir, format="imdb")


def test_explicit_format_skips_detection(latest_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"^items.csv or items.parquet not found"):
        read_dataset(latest_dir, format="generic")


# --- malformed input ---------------------------------------------------------------------


def one_line_error(folder: Path) -> str:
    with pytest.raises(DatasetError) as raised:
        read_dataset(folder)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_truncated_csv_keeps_the_cut_row(latest_dir: Path) -> None:
    write(latest_dir, {"ratings.csv": RATINGS_CSV + "3,1,4."})
    row = read_dataset(latest_dir).events.row(-1, named=True)
    assert (row["source_row"], row["user_id"], row["item_id"], row["event_value"], row["event_at"]) == (
        4,
        "3",
        "1",
        "4.",
        None,
    )


def test_row_cut_inside_a_quoted_title_still_lands(latest_dir: Path) -> None:
    write(latest_dir, {"movies.csv": MOVIES_CSV + '6000,"Lord of the Rings, The'})
    dataset = read_dataset(latest_dir)
    assert dataset.items.select("source_row", "item_id", "title").row(-1) == (6, "6000", "The Lord of the Rings")
    assert dataset.items.height == 6


def test_stray_quote_in_an_unquoted_field_still_lands(latest_dir: Path) -> None:
    write(latest_dir, {"tags.csv": TAGS_CSV + '3,58,5" floppy,1445714999\n'})
    assert read_dataset(latest_dir).native_tags["tag"].to_list()[-1] == '5" floppy'


def test_non_numeric_timestamp_and_missing_id_land_as_raw_text(latest_dir: Path) -> None:
    write(latest_dir, {"ratings.csv": RATINGS_CSV + "3,,four,yesterday\n"})
    row = read_dataset(latest_dir).events.row(-1, named=True)
    assert (row["item_id"], row["event_value"], row["event_at"]) == (None, "four", "yesterday")


def test_invalid_utf8_lands_with_replacement_characters(latest_dir: Path) -> None:
    write(latest_dir, {"tags.csv": TAGS_CSV.encode() + b"2,58,caf\xe9 cr\xe8me,1445714999\n"})
    assert read_dataset(latest_dir).native_tags["tag"].to_list()[-1] == "caf\ufffd cr\ufffdme"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"^ratings.csv is empty \(0 bytes\)"),
        (b"userId,movieId,rating,timestamp\n", r"^ratings.csv has a header but no data rows"),
        (b"userId,movieId,rating\n1,1,4.0\n", r"^ratings.csv lacks required column\(s\) timestamp"),
    ],
)
def test_unusable_ratings_file_is_a_one_line_error(latest_dir: Path, content: bytes, message: str) -> None:
    write(latest_dir, {"ratings.csv": content})
    assert re.match(message, one_line_error(latest_dir))


def test_header_only_tags_file_means_no_tags(latest_dir: Path) -> None:
    write(latest_dir, {"tags.csv": "userId,movieId,tag,timestamp\n"})
    assert read_dataset(latest_dir).native_tags.height == 0


def test_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in one_line_error(tmp_path / "nope")


FUZZ_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b",", b'"', b"\n", b"\r", b"1", b"x", b" ", b"\xff", b"\x00", b"\xc3"]), max_size=80).map(
        b"".join
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=FUZZ_BYTES)
def test_arbitrary_ratings_bytes_land_or_raise_dataset_error(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        write(Path(folder), {"movies.csv": MOVIES_CSV, "ratings.csv": b"userId,movieId,rating,timestamp\n" + body})
        try:
            dataset = read_dataset(folder)
        except DatasetError as exc:
            assert "\n" not in str(exc)
        else:
            assert_contract(dataset)


# --- landing -----------------------------------------------------------------------------


def landing_files(landing: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(landing.iterdir())}


def test_write_landing_writes_tables_and_manifest(latest_dir: Path, tmp_path: Path) -> None:
    dataset = read_dataset(latest_dir)
    landing = tmp_path / "landing"
    counts = write_landing(dataset, landing)
    assert counts == {"items": 5, "item_attributes": 19, "events": 3, "native_tags": 2}
    assert set(landing_files(landing)) == {f"{name}.parquet" for name in LANDING_SCHEMAS} | {"manifest.json"}
    for name, frame in dataset.tables().items():
        assert pl.read_parquet(landing / f"{name}.parquet").equals(frame)
    manifest = read_manifest(landing)
    assert manifest == json.loads((landing / "manifest.json").read_text())
    assert (manifest["dataset"], manifest["format"], manifest["source_dir"]) == (
        "ml-latest-small",
        "movielens-latest",
        str(latest_dir),
    )
    assert manifest["row_counts"] == counts
    expected = {
        name: hashlib.sha256((latest_dir / name).read_bytes()).hexdigest()
        for name in ("movies.csv", "ratings.csv", "tags.csv")
    }
    assert manifest["source_files"] == expected == source_hashes(latest_dir)


def break_third_table_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the third table is written, half a file already on it."""
    real_write = pl.DataFrame.write_parquet
    written: list[str] = []

    def fail_on_third(frame: pl.DataFrame, file: Path, *args: object, **kwargs: object) -> None:
        written.append(str(file))
        if len(written) == 3:
            Path(file).write_bytes(b"half a parquet")
            raise OSError(28, "No space left on device")
        real_write(frame, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", fail_on_third)


def break_third_table_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    """The third table cannot be renamed into place, after two were: those must be rolled back."""
    real_replace = datasets.os.replace
    renames: list[str] = []

    def fail_third_table_rename(source: str, target: str) -> None:
        if str(source).endswith(".tmp") and str(target).endswith(".parquet"):
            renames.append(str(target))
            if len(renames) == 3:
                raise PermissionError(13, "Permission denied")
        real_replace(source, target)

    monkeypatch.setattr(datasets.os, "replace", fail_third_table_rename)


@pytest.mark.parametrize(
    ("break_rewrite", "error", "message"),
    [
        pytest.param(break_third_table_write, DiskFullError, "no space left to write .*events.parquet", id="table-write-fails"),
        pytest.param(break_third_table_rename, PermissionError, "Permission denied", id="rename-rolls-back"),
    ],
)
def test_failed_rewrite_leaves_the_previous_landing_untouched(
    latest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, break_rewrite, error: type[OSError], message: str
) -> None:
    landing = tmp_path / "landing"
    write_landing(read_dataset(latest_dir), landing)
    before = landing_files(landing)
    write(latest_dir, {"ratings.csv": RATINGS_CSV + "9,1,1.0,964982999\n"})
    changed = read_dataset(latest_dir)

    break_rewrite(monkeypatch)
    with pytest.raises(error, match=message):
        write_landing(changed, landing)
    assert landing_files(landing) == before  # the tables already replaced are back; no temporary files either
