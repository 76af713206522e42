"""Adapter for the generic e-commerce contract: any catalogue exported as two files.

* ``items.csv`` or ``items.parquet``: ``item_id`` and ``title`` (required), ``description``,
  ``native_tags`` ("|"-separated human tags) and any other column, each of which becomes
  an item attribute named after the column ("|"-separated values give one row each).
* ``events.csv`` or ``events.parquet``: ``user_id``, ``item_id``, ``timestamp`` (required),
  ``event_type`` and ``value``.

Parquet columns of any type are turned into text so both forms land identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from dagster_betag.datasets.contract import DatasetError, conform, empty_table
from dagster_betag.datasets.reader import read_csv_text, read_parquet_text, split_values, stripped_id

Tables = dict[str, pl.DataFrame]

ITEM_COLUMNS = ("item_id", "title", "description", "native_tags")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "value")
_ROW_KEY = ["source_file", "source_row", "item_id"]


def read_generic(source_dir: Path) -> Tables:
    """Land items.{csv,parquet} and events.{csv,parquet} from ``source_dir``."""
    items = _read(table_file(source_dir, "items"), required=("item_id", "title"))
    items = items.with_columns(stripped_id("item_id"))
    events = _read(table_file(source_dir, "events"), required=("user_id", "item_id", "timestamp"))
    return {
        "items": conform("items", items),
        "item_attributes": conform("item_attributes", _attributes(items)),
        "events": conform("events", _events(events)),
        "native_tags": conform("native_tags", _native_tags(items)),
    }


def table_file(source_dir: Path, stem: str) -> Path:
    """``<stem>.csv`` or ``<stem>.parquet``; both at once is ambiguous, so it is refused."""
    present = [source_dir / f"{stem}.{ext}" for ext in ("csv", "parquet") if (source_dir / f"{stem}.{ext}").is_file()]
    if len(present) > 1:
        raise DatasetError(f"both {stem}.csv and {stem}.parquet are in {source_dir}; keep only one")
    if not present:
        raise DatasetError(f"{stem}.csv or {stem}.parquet not found in {source_dir}")
    return present[0]


def _read(path: Path, required: Sequence[str]) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return read_parquet_text(path, required=required)
    return read_csv_text(path, required=required)


def _attributes(items: pl.DataFrame) -> pl.DataFrame:
    """Every column that is not part of the item itself, in long form, one row per "|"-separated value."""
    names = [name for name in items.columns if name not in (*ITEM_COLUMNS, "source_file", "source_row")]
    if not names:
        return empty_table("item_attributes")
    long = items.unpivot(names, index=_ROW_KEY, variable_name="attribute_name", value_name="attribute_value")
    long = long.sort("source_row", maintain_order=True).with_columns(split_values("attribute_value"))
    return long.explode("attribute_value").filter(pl.col("attribute_value").is_not_null())


def _native_tags(items: pl.DataFrame) -> pl.DataFrame:
    if "native_tags" not in items.columns:
        return items.select(_ROW_KEY).clear()
    tags = items.select(*_ROW_KEY, tag=split_values("native_tags")).explode("tag")
    return tags.filter(pl.col("tag").is_not_null())


def _events(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_columns(
        stripped_id("user_id"),
        stripped_id("item_id"),
        event_at=pl.col("timestamp"),
        event_value=pl.col("value") if "value" in events.columns else pl.lit(None, pl.String),
    )
