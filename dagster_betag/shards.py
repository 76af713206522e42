"""Append-only Parquet shards: how long Python work writes into the warehouse.

DuckDB has one writer and dbt owns the database file, so Python assets write Parquet
shards that dbt reads. A shard is written to a temporary name and renamed when
complete, so a crash loses at most the shard in progress, and a rerun skips every key
whose shard already landed with the same ``run_key`` (model, prompt version, ...).
Library code, no Dagster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dagster_betag.files import replacing
from dagster_betag.progress import Progress

SHARD_GLOB = "shard-*.parquet"


@dataclass(frozen=True)
class ShardedTable:
    """One folder of shards. Each row carries the run-key columns, so shards of several
    runs (another model, another prompt) can live side by side and stay queryable."""

    folder: Path
    run_key: Mapping[str, str]  # column -> value identifying what produced the rows
    key_column: str = "item_id"

    def read(self) -> pl.DataFrame | None:
        """Every row written with this ``run_key`` (None before the first shard)."""
        shards = sorted(self.folder.glob(SHARD_GLOB))
        if not shards:
            return None
        frame = pl.scan_parquet(shards)
        for column, value in self.run_key.items():
            frame = frame.filter(pl.col(column) == value)
        return frame.collect()

    def done_keys(self) -> set[str]:
        """Keys already written by a run with this ``run_key``."""
        frame = self.read()
        return set() if frame is None else set(frame.get_column(self.key_column).to_list())

    def write(self, rows: pl.DataFrame) -> Path:
        """Add ``rows`` (without run-key columns) as one complete shard."""
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = rows.with_columns(pl.lit(value).alias(column) for column, value in self.run_key.items())
        name = f"shard-{len(list(self.folder.glob(SHARD_GLOB))):05d}-{uuid.uuid4().hex[:8]}.parquet"
        target = self.folder / name
        with replacing(target) as temporary:
            frame.write_parquet(temporary)
        return target


@dataclass(frozen=True)
class RunCounts:
    n_requested: int
    n_skipped: int  # already written by an earlier run with the same key
    n_generated: int
    seconds: float


def run_resumable(
    keys: Sequence[str],
    table: ShardedTable,
    produce: Callable[[list[str], Callable[[int], None]], pl.DataFrame],
    *,
    shard_size: int,
    what: str,
    log: Callable[[str], None],
) -> RunCounts:
    """Produce rows for every key not yet in ``table``, one shard per ``shard_size`` keys."""
    started = time.perf_counter()
    done = table.done_keys()
    todo = [key for key in keys if key not in done]
    log(f"{what}: {len(keys) - len(todo)} of {len(keys)} items already done, {len(todo)} to go")
    progress = Progress(len(todo), what, log)
    try:
        for first in range(0, len(todo), shard_size):
            table.write(produce(todo[first : first + shard_size], progress.advance))
    finally:
        progress.close()
    return RunCounts(len(keys), len(keys) - len(todo), len(todo), time.perf_counter() - started)
