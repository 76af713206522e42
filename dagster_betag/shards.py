"""Append-only Parquet shards: how long Python work writes into the warehouse.

DuckDB has one writer and dbt owns the database file, so Python assets write Parquet
shards that dbt reads. A shard is written to a temporary name and renamed when
complete, so a crash loses at most the shard in progress, and a rerun skips every key
whose shard already landed with the same ``run_key`` (model, prompt version, ...) and,
when the table is versioned, for the same input (an item whose description changed is
generated again).

Shards land as ``pending-*`` files and become ``shard-*`` files, the ones dbt reads,
only when ``publish`` is called at the end of a run: a run that fails half-way leaves
the tables built from the published shards as they were, and its rerun resumes from
its pending shards.

Rows are split over item shards (a stable hash of the item id), each with its own folder,
so several processes or machines can generate one item shard each. Library code, no Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import polars as pl

from dagster_betag.files import replacing
from dagster_betag.progress import Progress

PUBLISHED_PREFIX = "shard-"
PENDING_PREFIX = "pending-"
ALL_ITEM_SHARDS = "all"


def stable_hash(*parts: object) -> str:
    """A short hash of JSON-serializable parts that does not change between processes."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def item_shard_of(item_id: str, n_shards: int) -> str:
    """The item shard an item belongs to: stable across runs, processes and machines
    (Python's ``hash`` is salted per process, so it cannot be used)."""
    digest = hashlib.sha256(item_id.encode()).digest()
    return str(int.from_bytes(digest[:8], "big") % n_shards)


@dataclass(frozen=True)
class ShardedTable:
    """One folder of shards (one sub-folder per item shard). Each row carries the run-key
    columns and the item shard, so shards of several runs (another model, another prompt)
    live side by side and stay queryable."""

    folder: Path
    run_key: Mapping[str, str]  # column -> value identifying what produced the rows
    key_column: str = "item_id"
    # column holding a hash of the key's input (an item's description): a key is done only
    # for the input it was generated from
    version_column: str | None = None
    item_shard: str = ALL_ITEM_SHARDS

    @property
    def shard_folder(self) -> Path:
        return self.folder / f"item_shard={self.item_shard}"

    @property
    def run_key_hash(self) -> str:
        return stable_hash(sorted(self.run_key.items()))

    def for_item_shard(self, item_shard: str) -> ShardedTable:
        return ShardedTable(self.folder, self.run_key, self.key_column, self.version_column, item_shard)

    def read(self, *, published_only: bool = False) -> pl.DataFrame | None:
        """Every row written with this ``run_key``, in any item shard (None before the first
        shard); pending rows too unless ``published_only``."""
        prefixes = (PUBLISHED_PREFIX,) if published_only else (PUBLISHED_PREFIX, PENDING_PREFIX)
        shards = sorted(path for prefix in prefixes for path in self.folder.glob(f"**/{prefix}*.parquet"))
        if not shards:
            return None
        # shards of older releases may lack newer columns: align by name, nulls where missing
        frames = [pl.scan_parquet(path, hive_partitioning=False) for path in shards]
        frame = pl.concat(frames, how="diagonal_relaxed")
        present = set(frame.collect_schema().names())
        for column, value in self.run_key.items():
            # a run-key column no shard has yet (added in a later release): no row matches it
            frame = frame.filter(pl.col(column) == value if column in present else pl.lit(False))
        return frame.collect()

    def written_versions(self) -> dict[str, set[str | None]]:
        """key -> the versions written for it by a run with this ``run_key`` ({None} when unversioned)."""
        frame = self.read()
        if frame is None:
            return {}
        keys = frame.get_column(self.key_column).to_list()
        found = frame.get_column(self.version_column).to_list() if self.version_column else [None] * len(keys)
        written: dict[str, set[str | None]] = {}
        for key, version in zip(keys, found, strict=True):
            written.setdefault(key, set()).add(version)
        return written

    def done_keys(self, versions: Mapping[str, str] | None = None) -> set[str]:
        """Keys already written by a run with this ``run_key`` (with ``versions``: for the
        key's current version only)."""
        return _done(self.written_versions(), versions if self.version_column else None)

    def write(self, rows: pl.DataFrame) -> Path:
        """Add ``rows`` (without run-key columns) as one complete pending shard."""
        folder = self.shard_folder
        folder.mkdir(parents=True, exist_ok=True)
        frame = rows.with_columns(
            *(pl.lit(value).alias(column) for column, value in self.run_key.items()),
            pl.lit(self.item_shard).alias("item_shard"),
        )
        # time first: shards sort in the order they landed
        name = f"{PENDING_PREFIX}{self.run_key_hash}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        target = folder / name
        with replacing(target) as temporary:
            frame.write_parquet(temporary)
        return target

    def publish(self) -> int:
        """Make this run key's pending shards of this item shard visible to dbt (one rename
        each); returns how many were published."""
        pending = sorted(self.shard_folder.glob(f"{PENDING_PREFIX}{self.run_key_hash}-*.parquet"))
        for path in pending:
            os.replace(path, path.with_name(PUBLISHED_PREFIX + path.name.removeprefix(PENDING_PREFIX)))
        return len(pending)


@dataclass(frozen=True)
class RunCounts:
    n_requested: int
    n_skipped: int  # already written by an earlier run with the same key (and input)
    n_generated: int
    seconds: float
    n_changed: int = 0  # generated again because their input changed (the rest of n_generated are new)
    n_published_shards: int = 0

    def __add__(self, other: RunCounts) -> RunCounts:
        return RunCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def run_resumable(
    keys: Sequence[str],
    table: ShardedTable,
    produce: Callable[[list[str], Callable[[int], None]], pl.DataFrame],
    *,
    shard_size: int,
    what: str,
    log: Callable[[str], None],
    versions: Mapping[str, str] | None = None,
) -> RunCounts:
    """Produce rows for every key not yet in ``table`` (at its version in ``versions``), one
    pending shard per ``shard_size`` keys, then publish the run's shards."""
    started = time.perf_counter()
    written = table.written_versions()
    done = _done(written, versions)
    todo = [key for key in keys if key not in done]
    changed = {key for key in todo if key in written}  # written before, for another input
    log(
        f"{what}: {len(keys) - len(todo)} of {len(keys)} items already done, {len(todo)} to go "
        f"({len(changed)} of them changed since they were generated)"
    )
    progress = Progress(len(todo), what, log)
    try:
        for first in range(0, len(todo), shard_size):
            table.write(produce(todo[first : first + shard_size], progress.advance))
    finally:
        progress.close()
    n_published = table.publish()
    seconds = time.perf_counter() - started
    return RunCounts(len(keys), len(keys) - len(todo), len(todo), seconds, len(changed), n_published)


def _done(written: Mapping[str, set[str | None]], versions: Mapping[str, str] | None) -> set[str]:
    if versions is None:
        return set(written)
    return {key for key, found in written.items() if versions.get(key) in found}
