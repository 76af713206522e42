"""Bad input, property-tested: a defective row ends in quarantine with its reason, an unreadable
file ends in a one-line DatasetError before any table is touched, and nothing ends in between.

Hypothesis takes the synthetic dataset of tests/synthetic.py, writes it in the generic contract
(items.csv + events.csv) or the MovieLens layout (movies.csv, ratings.csv, tags.csv), and adds
defects of every kind the README names: malformed CSV (unbalanced quotes, short and long rows,
stray delimiters), invalid UTF-8, empty and header-only files, 100-200 kB titles, events for unknown
items, duplicate events, missing ids, timestamps out of range or unreadable. A plain-Python
reference reads the same bytes (Python's csv module, the README's rules) and says what must
become of every row. Two layers are checked against it:

* landing (fast, many examples): ``read_dataset`` + ``write_landing`` into a folder that already
  holds a good landing. Either a DatasetError of one line naming the file, and the old landing
  byte-identical; or every CSV record landed under its row number, with its ids as written.
* warehouse (slow, few examples): a real ``dbt build`` over a warehouse first built from the good
  dataset. The quarantined rows and their reasons are exactly the reference's, the build fails
  only where the reference leaves no k-core or session (the not_empty tests), marts the build
  rebuilt hold valid rows only, and marts it did not rebuild are exactly as they were.

Run with ``-s`` to see how many examples each property ran, by outcome, and how long it took.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import re
import shutil
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dagster_betag import settings as betag_settings
from dagster_betag.datasets import DatasetError, read_dataset, read_manifest, write_landing
from tests.conftest import BAD_INPUT_EXAMPLES
from tests.synthetic import Event, reference_kcore, reference_sessions, write_synthetic_movielens

pytestmark = pytest.mark.heavy

DBT_VARS = yaml.safe_load((betag_settings.DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"]

# --- layouts: which column of which file plays which role -----------------------------------------

Row = dict[str, str | None]  # role (item, title, user, at, ...) -> field text; None: no such field
ItemRows = dict[tuple[str, int], tuple[str | None, str | None]]  # (file, row) -> (item id, rejection reason)


@dataclass(frozen=True)
class FileSpec:
    name: str
    rows: str  # which rows it holds: items, events or tags
    table: str  # the landing table its records land in one to one
    columns: tuple[tuple[str, str], ...]  # (header name, role), in file order
    required: tuple[str, ...]  # header names the adapter refuses the file without
    optional: bool = False  # the dataset reads without this file, and with its header alone


@dataclass(frozen=True)
class Layout:
    name: str
    items: FileSpec
    events: FileSpec
    tags: FileSpec | None  # MovieLens tags.csv; generic tags are a column of the items file
    event_type: str | None  # the type the adapter gives every event; None: read from the file
    titles_lose_year: bool  # the adapter cuts a trailing "(YYYY)" off titles before staging sees them

    @property
    def files(self) -> tuple[FileSpec, ...]:
        return tuple(spec for spec in (self.items, self.events, self.tags) if spec is not None)


GENERIC = Layout(
    "generic",
    items=FileSpec(
        "items.csv", "items", "items",
        (("item_id", "item"), ("title", "title"), ("description", "description"), ("genre", "genre"),
         ("native_tags", "tags")),
        required=("item_id", "title"),
    ),
    events=FileSpec(
        "events.csv", "events", "events",
        (("user_id", "user"), ("item_id", "item"), ("timestamp", "at"), ("event_type", "type"), ("value", "value")),
        required=("user_id", "item_id", "timestamp"),
    ),
    tags=None,
    event_type=None,
    titles_lose_year=False,
)  # fmt: skip
MOVIELENS = Layout(
    "movielens",
    items=FileSpec(
        "movies.csv", "items", "items", (("movieId", "item"), ("title", "title"), ("genres", "genre")),
        required=("movieId", "title", "genres"),
    ),
    events=FileSpec(
        "ratings.csv", "events", "events",
        (("userId", "user"), ("movieId", "item"), ("rating", "value"), ("timestamp", "at")),
        required=("userId", "movieId", "rating", "timestamp"),
    ),
    tags=FileSpec(
        "tags.csv", "tags", "native_tags",
        (("userId", "user"), ("movieId", "item"), ("tag", "tag"), ("timestamp", "at")),
        required=("movieId", "tag"),
        optional=True,
    ),
    event_type="rating",
    titles_lose_year=True,
)  # fmt: skip
LAYOUTS = (GENERIC, MOVIELENS)


@functools.cache
def synthetic_rows() -> dict[str, tuple[Row, ...]]:
    """tests/synthetic.py's dataset as rows by role: a core dbt can build, its own defects included."""
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_movielens(Path(folder))
        movies, ratings, tags = (_dict_records(Path(folder) / f"{name}.csv") for name in ("movies", "ratings", "tags"))
    tags_by_item: dict[str, list[str]] = {}
    for tag in tags:
        tags_by_item.setdefault(tag["movieId"], []).append(tag["tag"])
    items = tuple(
        {"item": m["movieId"], "title": m["title"], "genre": m["genres"], "description": f"{m['title']}, on film",
         "tags": "|".join(tags_by_item.get(m["movieId"], []))}
        for m in movies
    )  # fmt: skip
    events = tuple(
        {"user": r["userId"], "item": r["movieId"], "value": r["rating"], "at": r["timestamp"], "type": None}
        for r in ratings
    )
    tag_rows = tuple({"user": t["userId"], "item": t["movieId"], "tag": t["tag"], "at": t["timestamp"]} for t in tags)
    return {"items": items, "events": events, "tags": tag_rows}


def _dict_records(path: Path) -> list[dict[str, str | None]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the reference: what must become of every row, in plain Python ----------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Unix seconds, optionally fractional, or ISO-8601 whose offset is a clock reading (RFC 3339: hours
# 00-23, minutes 00-59). Anything else, DuckDB's own words such as 'epoch' included, is unreadable.
UNIX_SECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?")
ISO_8601 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"  # date
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"  # time
    r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?"  # offset
)
# what DuckDB's try_cast(... as double) reads, as far as these datasets' values go
NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?\s*|[+-]?(inf|infinity|nan)", re.IGNORECASE)


def microseconds(text: str) -> int | None:
    """The instant ``text`` names, in microseconds since 1970 UTC, or None when it is unreadable."""
    if UNIX_SECONDS.fullmatch(text):
        return round(float(text) * 1_000_000)
    if not ISO_8601.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # a day or hour no calendar has (Feb 30, 25:00)
        return None
    return ((moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - EPOCH) // timedelta(microseconds=1)


EVENT_AT_RANGE = (microseconds(DBT_VARS["event_at_min"]), microseconds(DBT_VARS["event_at_max"]))


def clean(value: str | None) -> str | None:
    """dbt's clean_text: spaces trimmed, empty read as missing."""
    return (value.strip(" ") or None) if value is not None else None


def stripped_id(value: str | None) -> str | None:
    """An id as the adapters land it: surrounding whitespace removed, empty read as missing."""
    return (value.strip() or None) if value is not None else None


def display_title(title: str | None) -> str | None:
    """What is left of a MovieLens title for staging to check once the adapter took its "(YYYY)"."""
    return None if title is None else re.sub(r"\s*\((\d{4})\)$", "", title.strip())


def normalized_tag(tag: str) -> str:
    """stg_native_tags' tag_normalized: lower case, whitespace collapsed, outer punctuation removed."""
    collapsed = re.sub(r"[\t\n\f\r ]+", " ", tag.lower())
    punctuation = re.escape(string.punctuation)
    return re.sub(rf"^[{punctuation} ]+|[{punctuation} ]+$", "", collapsed)


@contextmanager
def unlimited_csv_fields() -> Iterator[None]:
    """Python's csv refuses fields over 128 kB, and the reference must read any; the limit is
    process-wide, so it is restored before the adapter under test reads anything."""
    limit = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def csv_records(data: bytes | None, spec: FileSpec) -> list[Row]:
    """The file's data records by role as RFC 4180 reads them: invalid UTF-8 replaced, short rows
    padded and long ones cut to the header, an unclosed quote running on to the next quote."""
    if not data:
        return []
    with unlimited_csv_fields():
        records = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")))
    position = {name.strip(): index for index, name in enumerate(records[0])}
    fields = [(role, position[name]) for name, role in spec.columns]
    return [{role: (record[at] or None) if at < len(record) else None for role, at in fields} for record in records[1:]]


@dataclass(frozen=True)
class Verdict:
    """What staging must do with one landed row: keep it (reason None) or quarantine it."""

    table: str
    source_file: str
    source_row: int
    reason: str | None
    key: tuple  # what makes two rows duplicates (the rejection_reason macro's keys)


def first_valid_wins(verdicts: list[Verdict], duplicate_reason: str) -> list[Verdict]:
    """The rejection_reason macro: among rows without a defect, a later copy of a key is a duplicate."""
    seen: set[tuple] = set()
    decided = []
    for verdict in sorted(verdicts, key=lambda v: v.source_row):
        if verdict.reason is None and verdict.key in seen:
            verdict = Verdict(verdict.table, verdict.source_file, verdict.source_row, duplicate_reason, verdict.key)
        elif verdict.reason is None:
            seen.add(verdict.key)
        decided.append(verdict)
    return decided


def first_defect(checks: tuple[tuple[str, bool], ...]) -> str | None:
    """The reason of the first check that holds, in the order staging's case expression tests them."""
    return next((reason for reason, defective in checks if defective), None)


def item_verdicts(layout: Layout, records: list[Row]) -> list[Verdict]:
    verdicts = []
    for row, record in enumerate(records, start=1):
        item_id = stripped_id(record["item"])
        title = clean(display_title(record["title"]) if layout.titles_lose_year else record["title"])
        reason = first_defect((("missing_item_id", item_id is None), ("missing_title", title is None)))
        verdicts.append(Verdict("items", layout.items.name, row, reason, (item_id,)))
    return first_valid_wins(verdicts, "duplicate_item")


def event_verdicts(layout: Layout, records: list[Row], valid_items: set[str]) -> list[Verdict]:
    verdicts = []
    for row, record in enumerate(records, start=1):
        user_id, item_id, at_text = stripped_id(record["user"]), stripped_id(record["item"]), clean(record["at"])
        at = None if at_text is None else microseconds(at_text)
        value = clean(record["value"])
        reason = first_defect((
            ("missing_user_id", user_id is None),
            ("missing_item_id", item_id is None),
            ("missing_timestamp", at_text is None),
            ("bad_timestamp", at is None),
            ("timestamp_out_of_range", at is not None and not EVENT_AT_RANGE[0] <= at < EVENT_AT_RANGE[1]),
            ("bad_value", value is not None and not NUMBER.fullmatch(value)),
            ("unknown_item", item_id not in valid_items),
        ))  # fmt: skip
        event_type = layout.event_type or clean(record["type"]) or "interaction"
        verdicts.append(Verdict("events", layout.events.name, row, reason, (user_id, item_id, at, event_type)))
    return first_valid_wins(verdicts, "duplicate_event")


def tag_verdicts(rows: list[tuple[str, int, Row]], item_rows: ItemRows, valid_items: set[str]) -> list[Verdict]:
    """Native tags from tags.csv (MovieLens) or from the items file's tag column (generic). A tag read
    from an item row the catalog rejected is rejected with it, as that row's attributes are."""
    verdicts = []
    for source_file, row, record in rows:
        item_id, tag, at_text = stripped_id(record["item"]), clean(record["tag"]), clean(record["at"])
        at = None if at_text is None else microseconds(at_text)
        reason = first_defect((
            ("missing_item_id", item_id is None),
            ("missing_tag", tag is None),
            ("bad_timestamp", at_text is not None and at is None),
            ("rejected_item", item_rows.get((source_file, row), (None, None))[1] is not None),
            ("unknown_item", item_id not in valid_items),
        ))  # fmt: skip
        key = (item_id, tag and tag.lower(), stripped_id(record["user"]), at)
        verdicts.append(Verdict("native_tags", source_file, row, reason, key))
    return first_valid_wins(verdicts, "duplicate_tag")


def attribute_verdicts(landed: pl.DataFrame, item_rows: ItemRows) -> list[Verdict]:
    """Attributes, from the landed rows: how an item row expands into attributes is the adapter's
    (and test_datasets.py's) business; whether each is kept follows from its item row."""
    verdicts = []
    for source_file, row, raw_id, raw_name, raw_value in landed.select(
        "source_file", "source_row", "item_id", "attribute_name", "attribute_value"
    ).iter_rows():
        item_id, name, value = clean(raw_id), clean(raw_name), clean(raw_value)
        item_row = item_rows.get((source_file, row), (None, None))
        reason = first_defect((
            ("missing_item_id", item_id is None),
            ("missing_value", name is None or value is None),
            ("unknown_item", item_row[0] != item_id),
            ("rejected_item", item_row[1] is not None),
        ))  # fmt: skip
        verdicts.append(Verdict("item_attributes", source_file, row, reason, (item_id, name and name.lower(), value)))
    return first_valid_wins(verdicts, "duplicate_attribute")


@dataclass(frozen=True)
class WarehouseReference:
    """What the warehouse must hold after building a dataset, in plain Python."""

    quarantined: Counter  # (source_table, source_file, source_row, rejection_reason) -> rows
    valid_items: set[str]
    kcore_event_ids: set[str]
    valid_attributes: Counter  # (item_id, attribute_name, attribute_value)
    valid_tags: Counter  # (item_id, normalized tag) -> taggings
    buildable: bool  # the not_empty tests can pass: items, a k-core and a train session exist


def warehouse_reference(dataset: DefectiveDataset, landing: Path) -> WarehouseReference:
    layout = dataset.layout
    items = item_verdicts(layout, csv_records(dataset.files.get(layout.items.name), layout.items))
    item_rows = {(v.source_file, v.source_row): (v.key[0], v.reason) for v in items}
    valid_items = {v.key[0] for v in items if v.reason is None}
    events = event_verdicts(layout, csv_records(dataset.files.get(layout.events.name), layout.events), valid_items)
    attributes = attribute_verdicts(pl.read_parquet(landing / "item_attributes.parquet"), item_rows)
    tags = tag_verdicts(tag_rows(dataset, landing), item_rows, valid_items)
    kcore = reference_kcore(
        [Event(v.source_row, v.key[0], v.key[1], v.key[2] / 1e6) for v in events if v.reason is None],
        DBT_VARS["kcore_min_user_interactions"],
        DBT_VARS["kcore_min_item_interactions"],
    )
    sessions = reference_sessions(
        kcore, DBT_VARS["session_gap_minutes"], DBT_VARS["session_max_items"], DBT_VARS["session_min_items"],
        DBT_VARS["new_item_share"],
    )
    normalized = Counter((v.key[0], normalized_tag(v.key[1])) for v in tags if v.reason is None)
    return WarehouseReference(
        quarantined=Counter(
            (v.table, v.source_file, v.source_row, v.reason) for v in items + events + attributes + tags if v.reason
        ),
        valid_items=valid_items,
        kcore_event_ids={f"{layout.events.name}#{e.source_row}" for e in kcore},
        valid_attributes=Counter(v.key for v in attributes if v.reason is None),
        valid_tags=Counter({key: n for key, n in normalized.items() if key[1]}),
        buildable=bool(valid_items and kcore and sessions),
    )


def tag_rows(dataset: DefectiveDataset, landing: Path) -> list[tuple[str, int, Row]]:
    """(file, row, record) of every native tag: tags.csv's records, or the landed generic tags."""
    spec = dataset.layout.tags
    if spec is not None:
        records = csv_records(dataset.files.get(spec.name), spec)
        return [(spec.name, row, record) for row, record in enumerate(records, start=1)]
    landed = pl.read_parquet(landing / "native_tags.parquet")
    return [
        (source_file, row, {"item": item_id, "tag": tag, "user": user_id, "at": at})
        for source_file, row, item_id, tag, user_id, at in landed.select(
            "source_file", "source_row", "item_id", "tag", "user_id", "tagged_at"
        ).iter_rows()
    ]


# --- strategies: the synthetic dataset with defects ------------------------------------------------

BLANKS = st.sampled_from(["", " ", "   "])
UNKNOWN_IDS = st.one_of(st.sampled_from(["999", "0", "03", "x7"]), st.text("0123456789x", min_size=1, max_size=4))
IN_RANGE_SECONDS = st.integers(EVENT_AT_RANGE[0] // 1_000_000, EVENT_AT_RANGE[1] // 1_000_000 - 1)
CLOCK_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59)  # minutes
BAD_OFFSETS = st.sampled_from(["+25:00", "+99:99", "+01:60", "-24:00", "+1", "+001:00", "Z+01:00", "+05:30:00"])
UNREADABLE_WORDS = st.sampled_from([
    "yesterday", "not-a-time", "epoch", "infinity", "-infinity", "now", "NaN", "12/31/2015", "2015-02-30",
    "2015-03-01T25:00:00", "20150301", "1e20", "-1E5", "1.4251680e+09",
])  # fmt: skip


def iso_8601(seconds: int, offset_minutes: int) -> str:
    """The instant as local time at a clock offset, e.g. 2015-03-01T05:30:00+05:30."""
    local = EPOCH + timedelta(seconds=seconds, minutes=offset_minutes)
    sign, minutes = ("+" if offset_minutes >= 0 else "-"), abs(offset_minutes)
    return f"{local:%Y-%m-%dT%H:%M:%S}{sign}{minutes // 60:02}:{minutes % 60:02}"


def with_offset(seconds: int, offset: str) -> str:
    return f"{EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}{offset}"


TIMESTAMPS = st.one_of(
    IN_RANGE_SECONDS.map(str),
    IN_RANGE_SECONDS.map(lambda seconds: f"{seconds}.5"),
    st.builds(iso_8601, IN_RANGE_SECONDS, CLOCK_OFFSETS),
    # out of range; Unix seconds stop at 11 digits, as staging reads longer ones as unreadable
    st.integers(-(10**11) + 1, -1).map(str),  # before 1970
    st.integers(EVENT_AT_RANGE[1] // 1_000_000, 10**11 - 1).map(str),  # 2100 or later
    st.sampled_from(["9999-12-31T23:59:59Z", "9999-12-31", "9999-01-01 00:00"]),
    st.builds(with_offset, IN_RANGE_SECONDS, BAD_OFFSETS),
    UNREADABLE_WORDS,
    st.text(st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=12),
    BLANKS,
)
# 100 and 200 kB titles (Python's csv refuses fields over 128 kB unless told otherwise) of text
# that needs quoting (commas, quotes), multi-byte characters and a "|"
HUGE_TITLES = st.builds(
    lambda unit, size: unit * (size // len(unit.encode()) + 1),
    st.sampled_from(['Long, "quoted" tale é 字 🎬 ', "a|b; c\t", "Saga, The "]),
    st.sampled_from([100_000, 200_000]),
)


Defect = Callable[..., None]  # (draw, rows by kind) -> None: changes the rows in place


def _copy_with(draw, rows: dict[str, list[Row]], kind: str, **changes: str) -> None:
    """A copy of a random row of ``kind`` with some fields changed, inserted anywhere in its file."""
    row = dict(rows[kind][draw(st.integers(0, len(rows[kind]) - 1))])
    row.update(changes)
    rows[kind].insert(draw(st.integers(0, len(rows[kind]))), row)


def _fresh_id(rows: dict[str, list[Row]]) -> str:
    return f"n{len(rows['items'])}"  # items only grow, so no two new items share an id


def _same_event_in_iso_8601(draw, rows: dict[str, list[Row]]) -> None:
    """A repeat of an event with its Unix time written as ISO-8601 at some offset: the same instant."""
    event = draw(st.sampled_from([row for row in rows["events"] if (row["at"] or "").isdigit()]))
    moved = {**event, "at": iso_8601(int(event["at"]), draw(CLOCK_OFFSETS))}
    rows["events"].insert(draw(st.integers(0, len(rows["events"]))), moved)


def _odd_timestamps(draw, rows: dict[str, list[Row]], kind: str) -> None:
    for timestamp in draw(st.lists(TIMESTAMPS, min_size=1, max_size=6)):
        _copy_with(draw, rows, kind, at=timestamp)


def _events_cut_short(draw, rows: dict[str, list[Row]]) -> None:
    """A prefix of the events file, as a failed export leaves it: the k-core may come out empty."""
    del rows["events"][draw(st.integers(1, len(rows["events"]))) :]


def _repeated_values(draw, rows: dict[str, list[Row]]) -> None:
    """An item whose multi-valued fields repeat a value, in the same or another spelling."""
    item = rows["items"][draw(st.integers(0, len(rows["items"]) - 1))]
    value = draw(st.sampled_from(["Drama", "x"]))
    item["genre"], item["tags"] = f"{value}| {value}", f"{value}|{value.upper()}|{value}."


ROW_DEFECTS: dict[str, Defect] = {
    "event for an unknown item": lambda draw, rows: _copy_with(draw, rows, "events", item=draw(UNKNOWN_IDS)),
    "duplicate event": lambda draw, rows: _copy_with(draw, rows, "events"),
    "duplicate event in ISO-8601": _same_event_in_iso_8601,
    "odd timestamps": lambda draw, rows: _odd_timestamps(draw, rows, "events"),
    "event without user id": lambda draw, rows: _copy_with(draw, rows, "events", user=draw(BLANKS)),
    "event without item id": lambda draw, rows: _copy_with(draw, rows, "events", item=draw(BLANKS)),
    "item without id": lambda draw, rows: _copy_with(draw, rows, "items", item=draw(BLANKS)),
    "item without title": lambda draw, rows: _copy_with(
        draw, rows, "items", item=_fresh_id(rows), title=draw(st.sampled_from(["", "   ", " (1999)"]))
    ),
    "duplicate item": lambda draw, rows: _copy_with(draw, rows, "items", title="Another take (2001)", tags="remake"),
    "100-200 kB title": lambda draw, rows: _copy_with(
        draw, rows, "items", item=_fresh_id(rows), title=draw(HUGE_TITLES)
    ),
    "repeated values": _repeated_values,
}
TAG_FILE_DEFECTS: dict[str, Defect] = {  # MovieLens tags.csv
    "tag for an unknown item": lambda draw, rows: _copy_with(draw, rows, "tags", item=draw(UNKNOWN_IDS)),
    "tag without text": lambda draw, rows: _copy_with(draw, rows, "tags", tag=draw(BLANKS)),
    "duplicate tag": lambda draw, rows: _copy_with(draw, rows, "tags"),
    "odd tag timestamps": lambda draw, rows: _odd_timestamps(draw, rows, "tags"),
}

# byte-level damage to one rendered line: malformed CSV and invalid UTF-8
JUNK = {
    "stray delimiter": b",",
    "stray quote": b'"',
    "invalid UTF-8 byte": b"\xff",
    "cut UTF-8 sequence": b"\xe2\x82",
    "UTF-8 surrogate": b"\xed\xa0\x80",
}
DAMAGES = st.one_of(
    st.tuples(st.just("short row"), st.integers(1, 5)),  # fields missing from the end, a blank line at worst
    st.tuples(st.just("long row"), st.integers(1, 3)),  # more fields than the header names
    st.tuples(st.sampled_from(sorted(JUNK)), st.integers(0, 10**6)),  # junk inserted at some byte
)
FILE_DEFECTS = ("0 bytes", "header only", "garbled header", "absent")


def csv_line(fields: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue().encode()


def damaged_line(fields: list[str], damage: tuple[str, int] | None) -> bytes:
    kind, amount = damage or ("none", 0)
    if kind == "short row":
        return csv_line(fields[: max(0, len(fields) - amount)])
    if kind == "long row":
        return csv_line(fields + ["stray"] * amount)
    line = csv_line(fields)
    if kind not in JUNK:
        return line
    at = amount % (len(line) + 1)
    return line[:at] + JUNK[kind] + line[at:]


def render(spec: FileSpec, rows: list[Row], damages: dict[int, tuple[str, int]]) -> bytes:
    header = csv_line([name for name, _ in spec.columns])
    roles = [role for _, role in spec.columns]
    lines = [damaged_line([row.get(role) or "" for role in roles], damages.get(i)) for i, row in enumerate(rows)]
    return b"".join(line + b"\n" for line in [header, *lines])


@dataclass(frozen=True)
class DefectiveDataset:
    layout: Layout
    files: dict[str, bytes]  # file name -> content; a layout file missing here is absent
    refused_file: str | None  # the file whose defect must stop the read, if one must
    defects: tuple[str, ...]  # what was done to it, for the statistics

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        for name, content in self.files.items():
            (folder / name).write_bytes(content)
        return folder

    def __repr__(self) -> str:  # the files are hundreds of kB; say what was done to them instead
        sizes = {name: len(content) for name, content in self.files.items()}
        return f"DefectiveDataset({self.layout.name}, {sizes}, refused {self.refused_file}, defects {self.defects})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints failing examples with this
        printer.text(repr(self))


def _file_defect(draw, layout: Layout, files: dict[str, bytes]) -> tuple[str, str | None]:
    """Break one whole file; return what was done and the file the read must refuse, if any."""
    kind, spec = draw(st.sampled_from(FILE_DEFECTS)), draw(st.sampled_from(layout.files))
    header, _, body = files[spec.name].partition(b"\n")
    if kind == "0 bytes":
        files[spec.name] = b""
    elif kind == "header only":
        files[spec.name] = header + b"\n"
    elif kind == "garbled header":
        name = draw(st.sampled_from(spec.required)).encode()
        garbled = draw(st.sampled_from([b"", name + b"\xff", name.upper(), b"x" + name]))
        files[spec.name] = b",".join(garbled if cell == name else cell for cell in header.split(b",")) + b"\n" + body
    else:
        del files[spec.name]
    refused = kind in ("0 bytes", "garbled header") or not spec.optional
    return f"{kind} ({spec.rows} file)", spec.name if refused else None


@st.composite
def defective_datasets(draw, layout: Layout, *, every_defect: bool, file_defects: bool) -> DefectiveDataset:
    """The synthetic dataset in ``layout``, perhaps with its events cut short, with row defects (each
    kind once when ``every_defect``, then a few more), damaged lines, and (when ``file_defects``)
    perhaps one broken file."""
    rows = {kind: [dict(row) for row in core] for kind, core in synthetic_rows().items()}
    cut = ["events cut short"] if draw(st.booleans()) else []
    if cut:
        _events_cut_short(draw, rows)
    defects = {**ROW_DEFECTS, **(TAG_FILE_DEFECTS if layout.tags else {})}
    chosen = (sorted(defects) if every_defect else []) + draw(st.lists(st.sampled_from(sorted(defects)), max_size=8))
    for name in chosen:
        defects[name](draw, rows)
    names = cut + chosen
    files = {}
    for spec in layout.files:
        damages = draw(st.lists(st.tuples(st.integers(0, 10**6), DAMAGES), max_size=3))
        files[spec.name] = render(spec, rows[spec.rows], {seed % len(rows[spec.rows]): d for seed, d in damages})
        names += [kind for _, (kind, _) in damages]
    refused = None
    if file_defects and draw(st.booleans()):
        broken, refused = _file_defect(draw, layout, files)
        names.append(broken)
    return DefectiveDataset(layout, files, refused, tuple(names))


# --- statistics ------------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    details: Counter = field(default_factory=Counter)

    def record(self, outcome: str, details: list) -> None:
        event(outcome)  # also in hypothesis' own statistics (--hypothesis-show-statistics)
        self.outcomes[outcome] += 1
        self.details.update(details)


@pytest.fixture
def tally(request) -> Iterator[Tally]:
    """The examples one property ran, by outcome and by what they contained, printed with the
    property's wall time (pytest -s shows it). One per property, not per example, on purpose."""
    counts, start = Tally(), time.perf_counter()
    yield counts
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in counts.outcomes.most_common())
    details = ", ".join(f"{detail}: {n}" for detail, n in sorted(counts.details.items(), key=str))
    print(
        f"\n{request.node.name}: {counts.outcomes.total()} examples in {time.perf_counter() - start:.1f} s"
        f" ({outcomes})\n  covered: {details}"
    )


# no deadline: a dbt build takes seconds; the tally fixture is one per property on purpose
PROPERTY_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


# --- landing layer ---------------------------------------------------------------------------------


def raw(value: str | None) -> str | None:
    return value or None


# landing table -> (landing column, role, what the adapter does to the field) compared record by record
LANDED_FIELDS = {
    "items": (("item_id", "item", stripped_id),),
    "events": (("user_id", "user", stripped_id), ("item_id", "item", stripped_id), ("event_at", "at", raw)),
    "native_tags": (("item_id", "item", stripped_id), ("tag", "tag", raw), ("user_id", "user", stripped_id)),
}


def landing_files(landing: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(landing.iterdir())}


def assert_every_record_landed(dataset: DefectiveDataset, landing: Path, counts: dict[str, int]) -> None:
    """Each file's CSV records landed one to one, under their row numbers and with their ids; the
    rows an item expands into (attributes, generic tags) each belong to a landed item row."""
    frames = {table: pl.read_parquet(landing / f"{table}.parquet") for table in counts}
    assert counts == {table: frame.height for table, frame in frames.items()} == read_manifest(landing)["row_counts"]
    for spec in dataset.layout.files:
        fields = LANDED_FIELDS[spec.table]
        records = csv_records(dataset.files.get(spec.name), spec)
        expected = [(spec.name, row, *(land(r[role]) for _, role, land in fields)) for row, r in enumerate(records, 1)]
        found = frames[spec.table].select("source_file", "source_row", *(column for column, _, _ in fields)).rows()
        assert [(name, row, *map(raw, values)) for name, row, *values in found] == expected, spec.name
    item_rows = set(frames["items"].select("source_file", "source_row", "item_id").rows())
    for table in ("item_attributes", *(() if dataset.layout.tags else ("native_tags",))):
        assert set(frames[table].select("source_file", "source_row", "item_id").rows()) <= item_rows, table


@pytest.fixture(scope="module")
def good_landing(tmp_path_factory) -> Path:
    """A landing of the good synthetic dataset, copied under every example's defective one."""
    root = tmp_path_factory.mktemp("good-landing")
    write_landing(read_dataset(write_synthetic_movielens(root / "dataset").folder), root / "landing")
    return root / "landing"


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.name)
@settings(max_examples=BAD_INPUT_EXAMPLES["landing_per_layout"], **PROPERTY_SETTINGS)
@given(data=st.data())
def test_landing_refuses_in_one_line_or_lands_every_record(layout, data, good_landing, tally) -> None:
    """A broken file stops the read with one line naming it and leaves the old landing as it was;
    anything less broken lands, every record of it."""
    dataset = data.draw(defective_datasets(layout, every_defect=False, file_defects=True), label="dataset")
    with tempfile.TemporaryDirectory() as folder:
        landing = Path(folder) / "landing"
        shutil.copytree(good_landing, landing)
        before = landing_files(landing)
        try:
            counts = write_landing(read_dataset(dataset.write(Path(folder) / "defective")), landing)
        except DatasetError as error:
            message = str(error)
            assert dataset.refused_file is not None and dataset.refused_file in message, message
            assert "\n" not in message and "Traceback" not in message, message
            assert landing_files(landing) == before
            outcome = "refused"
        else:
            assert dataset.refused_file is None, f"{dataset.refused_file} was read"
            assert_every_record_landed(dataset, landing, counts)
            outcome = "landed"
    tally.record(outcome, list(dataset.defects))


# --- warehouse layer -------------------------------------------------------------------------------


@dataclass
class Warehouse:
    """A warehouse folder dbt builds into, put back to the good build before every example.

    Its path never changes because dbt's partial parse remembers BETAG_WAREHOUSE_DIR: a new value
    would make every build parse the whole project again.
    """

    root: Path
    exclude: tuple[str, ...]  # what dbt leaves out of the build
    marts_before: dict[str, list[tuple]] = field(default_factory=dict)

    @property
    def live(self) -> Path:
        return self.root / "warehouse"

    @property
    def landing(self) -> Path:
        return self.live / "landing"

    @property
    def database(self) -> Path:
        return self.live / "betag.duckdb"

    @property
    def dbt_log(self) -> Path:
        return self.root / "dbt-logs" / "dbt.log"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints failing examples with this
        printer.text(f"Warehouse({self.root})")

    def reset(self) -> None:
        shutil.rmtree(self.live)
        shutil.copytree(self.root / "baseline", self.live)

    def save_baseline(self) -> None:
        shutil.copytree(self.live, self.root / "baseline")
        self.marts_before = marts_snapshot(self.database)

    def build(self) -> tuple[bool, dict[str, str]]:
        """``dbt build`` in this process (a subprocess spends seconds importing dbt on every example):
        whether it succeeded, and the status of each model (by relation) and test (by name)."""
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager
        from dbt.cli.main import dbtRunner

        project = str(betag_settings.DBT_PROJECT_DIR)
        args = [
            "build", "--exclude", *self.exclude, "--project-dir", project, "--profiles-dir", project,
            "--target-path", str(self.root / "dbt-target"), "--log-path", str(self.dbt_log.parent),
            # expected failures (an events file cut short) would fill the console; the log file keeps them
            "--log-level", "none", "--log-level-file", "info",
        ]  # fmt: skip
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(betag_settings.WAREHOUSE_ENV, str(self.live))
            result = dbtRunner().invoke(args)
        # dbt-duckdb keeps its connection for the next invocation; close it before the file is read or copied
        DuckDBConnectionManager.close_all_connections()
        gc.collect()
        if result.exception is not None:  # dbt itself failed, not a model or a test
            raise result.exception
        return result.success, {
            f"{r.node.schema}.{r.node.name}" if r.node.resource_type == "model" else r.node.name: str(r.status)
            for r in result.result.results
        }


def table_rows(connection: duckdb.DuckDBPyConnection, relation: str) -> list[tuple]:
    return sorted(connection.execute(f"select * from {relation}").fetchall(), key=repr)


def marts_snapshot(database: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(database), read_only=True) as connection:
        tables = connection.execute(
            "select table_name from information_schema.tables where table_schema = 'marts'"
        ).fetchall()
        return {f"marts.{name}": table_rows(connection, f"marts.{name}") for (name,) in tables}


@pytest.fixture(scope="module")
def warehouse(dbt_manifest, tmp_path_factory) -> Warehouse:
    """The good synthetic dataset landed and built once; every example starts from a copy of it.
    The build is the warehouse_models asset's selection; dbt unit tests, whose inputs are fixed in
    their YAML, do not depend on the data and are left to test_pipeline.py."""
    from dagster_betag.defs.assets.warehouse_models import EVALUATION_OUTPUTS, LLM_OUTPUTS

    exclude = (LLM_OUTPUTS, EVALUATION_OUTPUTS, "resource_type:unit_test")
    house = Warehouse(tmp_path_factory.mktemp("bad-input"), exclude)
    write_landing(read_dataset(write_synthetic_movielens(house.root / "good").folder), house.landing)
    assert house.build()[0], f"the good dataset does not build; see {house.dbt_log}"
    house.save_baseline()
    return house


def check_dim_items(connection: duckdb.DuckDBPyConnection, reference: WarehouseReference) -> None:
    rows = connection.execute("select item_id, attributes from marts.dim_items").fetchall()
    assert {item_id for item_id, _ in rows} == reference.valid_items
    attributes = Counter(
        (item_id, name, value)
        for item_id, attributes in rows
        for name, values in (attributes or {}).items()
        for value in values
    )
    assert attributes == reference.valid_attributes


def check_fct_interactions(connection: duckdb.DuckDBPyConnection, reference: WarehouseReference) -> None:
    found = {event_id for (event_id,) in connection.execute("select event_id from marts.fct_interactions").fetchall()}
    assert found == reference.kcore_event_ids


def check_fct_item_native_tags(connection: duckdb.DuckDBPyConnection, reference: WarehouseReference) -> None:
    rows = connection.execute("select item_id, tag, n_taggings from marts.fct_item_native_tags").fetchall()
    assert Counter({(item_id, tag): n for item_id, tag, n in rows}) == reference.valid_tags


def check_fct_item_popularity(connection: duckdb.DuckDBPyConnection, reference: WarehouseReference) -> None:
    found = {item_id for (item_id,) in connection.execute("select item_id from marts.fct_item_popularity").fetchall()}
    assert found <= reference.valid_items


# the marts whose rows map back to input rows, and how a rebuilt one must look
MART_CHECKS = {
    "marts.dim_items": check_dim_items,
    "marts.fct_interactions": check_fct_interactions,
    "marts.fct_item_native_tags": check_fct_item_native_tags,
    "marts.fct_item_popularity": check_fct_item_popularity,
}


def differences(connection: duckdb.DuckDBPyConnection, found: Counter, expected: Counter, limit: int = 12) -> str:
    """The first rows that one side has more of than the other, with their raw values, to read in a failure."""
    extra, missing = sorted((found - expected).items())[:limit], sorted((expected - found).items())[:limit]
    rows = {(table, name, row) for (table, name, row, _), _ in extra + missing}
    quarantined = connection.execute(
        "select source_table, source_file, source_row, rejection_reason, item_id, user_id, raw_values"
        " from staging.stg_quarantined_rows"
    ).fetchall()
    raw = [values for values in quarantined if values[:3] in rows]
    return f"quarantined but not expected: {extra}; expected but not quarantined: {missing}; their rows: {raw}"


@settings(max_examples=BAD_INPUT_EXAMPLES["dbt_build"], **PROPERTY_SETTINGS)
@given(
    dataset=st.sampled_from(LAYOUTS).flatmap(
        lambda layout: defective_datasets(layout, every_defect=True, file_defects=False)
    )
)
def test_dbt_build_quarantines_every_defective_row_and_leaves_marts_whole(dataset, warehouse, tally) -> None:
    """After a good build, a dataset with every kind of row defect: each defective row is quarantined
    with its reason, and no mart holds a quarantined row or is left half-built by a failed build."""
    warehouse.reset()
    with tempfile.TemporaryDirectory() as folder:
        write_landing(read_dataset(dataset.write(Path(folder) / "defective")), warehouse.landing)
    reference = warehouse_reference(dataset, warehouse.landing)
    succeeded, statuses = warehouse.build()
    failed = {node: status for node, status in statuses.items() if status not in ("success", "pass")}
    assert succeeded == reference.buildable, f"{failed}; see {warehouse.dbt_log}"
    assert statuses["staging.stg_quarantined_rows"] == "success"
    with duckdb.connect(str(warehouse.database), read_only=True) as connection:
        quarantined = Counter(
            connection.execute(
                "select source_table, source_file, source_row, rejection_reason from staging.stg_quarantined_rows"
            ).fetchall()
        )
        assert quarantined == reference.quarantined, differences(connection, quarantined, reference.quarantined)
        leftovers = connection.execute(
            "select table_schema, table_name from information_schema.tables where contains(table_name, '__dbt_')"
        ).fetchall()
        assert leftovers == [], "dbt left temporary or backup tables behind"
        for relation, check in MART_CHECKS.items():
            if statuses.get(relation) == "success":
                check(connection, reference)
        for relation, rows in warehouse.marts_before.items():
            if statuses.get(relation) != "success":
                assert table_rows(connection, relation) == rows, f"{relation} changed though dbt did not build it"
    outcome = f"{dataset.layout.name}, {'built' if succeeded else 'dbt build failed'}"
    tally.record(outcome, [(table, reason) for table, _, _, reason in quarantined.elements()])
