"""The landing contract: what every dataset adapter hands to the warehouse.

Adapters translate a source layout (MovieLens CSV/.dat files, a generic items + events
export) into four tables whose values are still *raw text*. They never coerce types or
drop rows: typing, de-duplication and quarantine of bad rows happen in dbt staging, so a
bad row is counted and kept rather than lost in Python.

Every table carries ``source_file`` (file name) and ``source_row`` (1-based data-row
number within that file, header excluded) so a quarantined row can be traced back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

# table name -> ordered columns; every column is Utf8 except source_row (Int64).
LANDING_SCHEMAS: dict[str, tuple[str, ...]] = {
    # one row per item; title required (staging quarantines a missing one)
    "items": ("source_file", "source_row", "item_id", "title", "description"),
    # long format: one row per (item, attribute, value); multi-valued attributes repeat
    "item_attributes": ("source_file", "source_row", "item_id", "attribute_name", "attribute_value"),
    # event_at: raw text, epoch seconds or ISO-8601; event_value: e.g. a rating
    "events": ("source_file", "source_row", "user_id", "item_id", "event_at", "event_type", "event_value"),
    # human tags (MovieLens tags.csv); user_id and tagged_at may be null
    "native_tags": ("source_file", "source_row", "item_id", "tag", "user_id", "tagged_at"),
}


class DatasetError(ValueError):
    """A dataset cannot be read; the message is one line a user can act on."""


def empty_table(name: str) -> pl.DataFrame:
    """An empty landing table with the contract's columns and types."""
    return pl.DataFrame(schema=_polars_schema(name))


def conform(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Select and cast ``frame`` to the contract of table ``name`` (missing optional columns become null)."""
    schema = _polars_schema(name)
    columns = [
        (pl.col(column) if column in frame.columns else pl.lit(None)).cast(dtype).alias(column)
        for column, dtype in schema.items()
    ]
    return frame.select(columns)


def _polars_schema(name: str) -> dict[str, pl.DataType]:
    return {c: (pl.Int64 if c == "source_row" else pl.Utf8) for c in LANDING_SCHEMAS[name]}


@dataclass(frozen=True)
class LandedDataset:
    """A dataset in the landing contract, ready to be written as Parquet."""

    name: str  # e.g. "ml-latest-small"
    format: str  # adapter that read it, e.g. "movielens-latest"
    source_dir: Path
    items: pl.DataFrame
    item_attributes: pl.DataFrame
    events: pl.DataFrame
    native_tags: pl.DataFrame
    # source file name -> SHA-256, taken *before* reading so a file changed mid-read
    # still shows up as changed next time; recorded in the landing manifest
    source_hashes: dict[str, str] = field(default_factory=dict)

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: getattr(self, name) for name in LANDING_SCHEMAS}
