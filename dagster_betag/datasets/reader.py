"""Read one source file into a frame of raw text, the way every adapter needs it.

Adapters must land every row, however malformed, so this module reads all columns as
text, keeps short (truncated) rows with the missing fields null, replaces undecodable
bytes instead of failing, and numbers each data row (``source_row``, 1-based, header
excluded) before anything can drop or reorder it. What it cannot read at all (a missing,
empty or header-only file, a missing required column) raises a one-line ``DatasetError``
naming the file.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from polars.exceptions import PanicException, PolarsError

from dagster_betag.datasets.contract import DatasetError

# Columns this module adds; a source file must not bring its own.
SOURCE_COLUMNS = ("source_file", "source_row")

# Single bytes that stand in for a multi-character separator such as ml-1m's "::".
_SEPARATOR_STAND_INS = (b"\x1f", b"\x1e", b"\x1d", b"\x1c")


def read_csv_text(
    path: Path,
    *,
    required: Sequence[str],
    columns: Sequence[str] | None = None,
    separator: str = ",",
    quote_char: str | None = '"',
    encoding: str = "utf8",
    allow_no_rows: bool = False,
) -> pl.DataFrame:
    """Read a delimited file with every column as text, plus ``source_file``/``source_row``.

    ``columns`` names the fields of a headerless file (MovieLens .dat/u.* files); without
    it the first line is the header. ``encoding`` is "utf8" (bad bytes become U+FFFD) or
    "latin-1". Polars does the parsing; the rare file it rejects or would misread (stray
    quotes) is parsed with Python's csv module, which accepts anything, so no row is ever lost.
    """
    _check_file(path)
    source, separator = _source(path, encoding, separator)
    frame = _polars_read_if_safe(source, columns, separator, quote_char)
    if frame is None:
        data = source if isinstance(source, bytes) else path.read_bytes()
        frame = _python_read(path, data, columns, separator, quote_char)
    return _finish(path, frame, required, allow_no_rows)


def read_parquet_text(path: Path, *, required: Sequence[str], allow_no_rows: bool = False) -> pl.DataFrame:
    """Read a Parquet file and turn every column into text (timestamps as ISO-8601, lists joined by "|")."""
    _check_file(path)
    try:
        frame = pl.read_parquet(path)
    except (PolarsError, PanicException, OSError) as exc:
        raise DatasetError(f"{path.name} is not a readable Parquet file ({one_line(exc)})") from exc
    text = pl.DataFrame([_as_text(path, frame.get_column(name)) for name in frame.columns])
    return _finish(path, text.select(_null_if_empty(name) for name in text.columns), required, allow_no_rows)


def stripped_id(column: str) -> pl.Expr:
    """An id column with surrounding whitespace removed and an empty id turned into null."""
    return _null_if_empty(column, pl.col(column).str.strip_chars())


def split_values(column: str) -> pl.Expr:
    """A "|"-separated text column as a list of stripped, non-empty values (explode it next)."""
    values = pl.col(column).str.split("|").list.eval(pl.element().str.strip_chars())
    return values.list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, so a DatasetError stays one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"{path.name} not found in {path.parent}")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path.name} is empty (0 bytes) in {path.parent}")


def _source(path: Path, encoding: str, separator: str) -> tuple[Path | bytes, str]:
    """What polars should parse: the file itself when it can, else recoded bytes.

    Latin-1 is re-encoded as UTF-8, and a multi-character separator is swapped for one
    unused byte because polars only splits on a single byte; ``bytes.replace`` keeps the
    1M-line ml-1m files far from per-line Python.
    """
    if encoding == "utf8" and len(separator) == 1:
        return path, separator
    data = path.read_bytes()
    if encoding == "latin-1":
        data = data.decode("latin-1").encode("utf-8")
    if len(separator) > 1:
        stand_in = next((byte for byte in _SEPARATOR_STAND_INS if byte not in data), None)
        if stand_in is None:
            raise DatasetError(f"cannot split on {separator!r}: the file uses every stand-in control byte")
        data = data.replace(separator.encode(), stand_in)
        separator = stand_in.decode()
    return data, separator


def _polars_read_if_safe(
    source: Path | bytes, columns: Sequence[str] | None, separator: str, quote_char: str | None
) -> pl.DataFrame | None:
    """Polars' reading, or None where polars rejects the file or could misread it: a quote inside
    a field rather than at its edge may be taken for the start of a quoted field, folding every
    line up to the next such quote into one value."""
    if quote_char is not None and _has_stray_quote(source, separator, quote_char):
        return None
    try:
        return _polars_read(source, columns, separator, quote_char)
    except (PolarsError, PanicException):
        return None


def _has_stray_quote(source: Path | bytes, separator: str, quote_char: str) -> bool:
    """Whether some quote has a byte other than a separator, line break or quote on both sides
    (as in ``5" floppy``); read in chunks, so a big file never sits in memory whole."""
    quote = re.escape(quote_char.encode())
    inside = b"[^" + re.escape(separator.encode()) + quote + b"\r\n]"
    stray = re.compile(b"(?<=" + inside + b")" + quote + b"(?=" + inside + b")")
    if isinstance(source, bytes):
        return stray.search(source) is not None
    with source.open("rb") as handle:
        tail = b""  # a quote and its two neighbours may straddle two chunks
        while chunk := handle.read(1 << 24):
            window = tail + chunk
            if quote_char.encode() in window and stray.search(window):
                return True
            tail = window[-2:]
    return False


def _polars_read(
    source: Path | bytes, columns: Sequence[str] | None, separator: str, quote_char: str | None
) -> pl.DataFrame:
    return pl.read_csv(
        source,
        has_header=columns is None,
        schema=None if columns is None else {name: pl.String for name in columns},
        with_column_names=None if columns is not None else (lambda names: [n.strip() for n in names]),
        separator=separator,
        quote_char=quote_char,
        infer_schema=False,
        encoding="utf8-lossy",
        truncate_ragged_lines=True,
    )


def _python_read(
    path: Path, data: bytes, columns: Sequence[str] | None, separator: str, quote_char: str | None
) -> pl.DataFrame:
    """Parse with Python's lenient csv module; rows are padded or cut to the header's width, as polars does.

    Its 128 kB limit on a field is lifted for the parse (polars has none), so a long description
    or a quote left open does not refuse the whole file; the process-wide limit is put back after.
    """
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    dialect = {
        "delimiter": separator,
        "quotechar": quote_char,
        "quoting": csv.QUOTE_NONE if quote_char is None else csv.QUOTE_MINIMAL,
    }
    limit = csv.field_size_limit(sys.maxsize)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), **dialect))
    except csv.Error as exc:
        raise DatasetError(f"{path.name} is not readable as CSV ({one_line(exc)})") from exc
    finally:
        csv.field_size_limit(limit)
    if columns is None:
        while rows and not rows[0]:
            rows.pop(0)
        columns = [name.strip() for name in rows.pop(0)] if rows else []
    width = len(columns)
    padded = [[value or None for value in row[:width]] + [None] * (width - len(row)) for row in rows]
    return pl.DataFrame(padded, schema={name: pl.String for name in columns}, orient="row")


def _finish(path: Path, frame: pl.DataFrame, required: Sequence[str], allow_no_rows: bool) -> pl.DataFrame:
    """Check the columns and row count, then add ``source_file`` and the 1-based ``source_row``."""
    if clash := [name for name in SOURCE_COLUMNS if name in frame.columns]:
        raise DatasetError(f"{path.name} has a column named {clash[0]!r}, which is reserved; rename it")
    if missing := [name for name in required if name not in frame.columns]:
        found = ", ".join(frame.columns) or "none"
        raise DatasetError(f"{path.name} lacks required column(s) {', '.join(missing)} (found: {found})")
    if frame.height == 0 and not allow_no_rows:
        raise DatasetError(f"{path.name} has a header but no data rows")
    return frame.with_row_index("source_row", offset=1).with_columns(
        pl.col("source_row").cast(pl.Int64), source_file=pl.lit(path.name)
    )


def _as_text(path: Path, column: pl.Series) -> pl.Series:
    """A Parquet column as text: ISO-8601 for timestamps and durations, "|"-joined lists, else polars' cast."""
    dtype = column.dtype
    try:
        if isinstance(dtype, pl.Datetime):
            return column.dt.to_string("%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else ""))
        if isinstance(dtype, pl.Duration):
            return column.dt.to_string("iso")
        if isinstance(dtype, (pl.List, pl.Array)):
            return column.cast(pl.List(pl.String)).list.join("|")
        return column.cast(pl.String)
    except PolarsError as exc:
        reason = one_line(exc)
        raise DatasetError(
            f"{path.name}: column {column.name!r} ({dtype}) cannot be turned into text ({reason})"
        ) from exc


def _null_if_empty(name: str, value: pl.Expr | None = None) -> pl.Expr:
    value = pl.col(name) if value is None else value
    return pl.when(value.str.len_bytes() > 0).then(value).alias(name)
