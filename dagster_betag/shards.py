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

Shards are written and renamed durably (``dagster_betag.files``), and a shard that cannot
be read all the same (cut short by a copy, zeroed by a power cut on another filesystem, or
lacking the key column) is moved to ``quarantine/`` beside the item-shard folders with one
warning line: its items count as not generated, so the run generates them again, instead of
every later run failing on an error that names no file.

Rows are split over item shards (a stable hash of the item id), each with its own folder,
so several processes or machines can generate one item shard each. Library code, no Dagster.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import polars as pl

from dagster_betag.files import durable_rename, make_folders, replacing
from dagster_betag.hashing import stable_hash
from dagster_betag.progress import Progress

PUBLISHED_PREFIX = "shard-"
PENDING_PREFIX = "pending-"
ALL_ITEM_SHARDS = "all"
QUARANTINE_FOLDER = "quarantine"
# listings a read tries while concurrent runs keep renaming the shards it listed
READ_ATTEMPTS = 5
# appended to a quarantined shard's name: neither dbt's sources ("**/shard-*.parquet") nor
# the shard listing here match it, though the quarantine folder lies under the table's folder
QUARANTINED_SUFFIX = ".quarantined"

_logger = logging.getLogger(__name__)


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

    @property
    def quarantine_folder(self) -> Path:
        return self.folder / QUARANTINE_FOLDER

    def shards(self, *, published_only: bool = False) -> list[Path]:
        """The complete shard files of every run key and item shard (temporary files are hidden)."""
        prefixes = (PUBLISHED_PREFIX,) if published_only else (PUBLISHED_PREFIX, PENDING_PREFIX)
        return sorted(path for prefix in prefixes for path in self.folder.glob(f"**/{prefix}*.parquet"))

    def quarantine_unreadable(self, log: Callable[[str], None] = _logger.warning) -> int:
        """Move every shard whose Parquet footer cannot be read, or that lacks the key column,
        to ``quarantine/``, one ``log`` line each; returns how many were moved.

        The footer is all that is read (a truncated or zero-length file has none), so this costs
        a few kB per shard. The items of a moved shard cannot be read from it; they are simply
        not done any more, and the run that called this generates them again."""
        n_moved = 0
        for path in self.shards():
            try:
                problem = self._problem(path)
            except FileNotFoundError:
                continue  # published or quarantined by a concurrent run since it was listed
            if problem is None:
                continue
            destination = self.quarantine_folder / path.relative_to(self.folder)
            destination = destination.with_name(destination.name + QUARANTINED_SUFFIX)
            make_folders(destination.parent)
            try:
                durable_rename(path, destination)
            except FileNotFoundError:
                continue
            n_moved += 1
            log(
                f"quarantined unreadable shard {path} ({problem}) as {destination}; its item ids cannot be "
                "read from it, so its items count as not generated and are generated again"
            )
        return n_moved

    def _problem(self, path: Path) -> str | None:
        """Why the shard at ``path`` cannot be read, or None when its footer and schema are fine."""
        try:
            schema = pl.read_parquet_schema(path)
        except FileNotFoundError:
            raise
        except Exception as error:  # polars reports a bad footer as ComputeError, an OS failure as OSError
            if path.stat().st_size == 0:
                return "zero-length file"
            return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        if self.key_column not in schema:
            return f"no {self.key_column} column"
        return None

    def read(
        self, *, published_only: bool = False, log: Callable[[str], None] = _logger.warning
    ) -> pl.DataFrame | None:
        """Every row written with this ``run_key``, in any item shard (None before the first
        shard); pending rows too unless ``published_only``. Unreadable shards are quarantined
        first (``log`` says which), never read."""
        self.quarantine_unreadable(log)
        failed_reads = 0
        while True:
            shards = self.shards(published_only=published_only)
            if not shards:
                return None
            try:
                return self._rows_of(shards)
            except Exception:  # polars reports a missing file in several exception types
                # a concurrent run published (renamed) or quarantined a listed shard before it
                # was read: its rows are under the new name, so list again
                failed_reads += 1
                if failed_reads == READ_ATTEMPTS or all(path.exists() for path in shards):
                    raise

    def _rows_of(self, shards: list[Path]) -> pl.DataFrame:
        # shards of older releases may lack newer columns: align by name, nulls where missing
        frames = [pl.scan_parquet(path, hive_partitioning=False) for path in shards]
        frame = pl.concat(frames, how="diagonal_relaxed")
        present = set(frame.collect_schema().names())
        for column, value in self.run_key.items():
            # a run-key column no shard has yet (added in a later release): no row matches it
            frame = frame.filter(pl.col(column) == value if column in present else pl.lit(False))
        return frame.collect()

    def written_versions(self, log: Callable[[str], None] = _logger.warning) -> dict[str, set[str | None]]:
        """key -> the versions written for it by a run with this ``run_key`` ({None} when unversioned)."""
        frame = self.read(log=log)
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
        frame = rows.with_columns(
            *(pl.lit(value).alias(column) for column, value in self.run_key.items()),
            pl.lit(self.item_shard).alias("item_shard"),
        )
        # time first: shards sort in the order they landed
        name = f"{PENDING_PREFIX}{self.run_key_hash}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        target = self.shard_folder / name
        with replacing(target) as temporary:
            frame.write_parquet(temporary)
        return target

    def publish(self) -> int:
        """Make this run key's pending shards of this item shard visible to dbt (one durable
        rename each); returns how many were published."""
        pending = sorted(self.shard_folder.glob(f"{PENDING_PREFIX}{self.run_key_hash}-*.parquet"))
        for path in pending:
            durable_rename(path, path.with_name(PUBLISHED_PREFIX + path.name.removeprefix(PENDING_PREFIX)))
        return len(pending)


@dataclass(frozen=True)
class RunCounts:
    n_requested: int
    n_skipped: int  # already written by an earlier run with the same key (and input)
    n_generated: int
    seconds: float
    n_changed: int = 0  # generated again because their input changed (the rest of n_generated are new)
    n_published_shards: int = 0
    n_quarantined: int = 0  # unreadable shards moved to quarantine/ (their items generated again)

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
    pending shard per ``shard_size`` keys, then publish the run's shards. Unreadable shards
    (published, or pending from an earlier try) are quarantined first and their keys redone."""
    started = time.perf_counter()
    n_quarantined = table.quarantine_unreadable(log)
    written = table.written_versions(log)
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
    return RunCounts(len(keys), len(keys) - len(todo), len(todo), seconds, len(changed), n_published, n_quarantined)


def _done(written: Mapping[str, set[str | None]], versions: Mapping[str, str] | None) -> set[str]:
    if versions is None:
        return set(written)
    return {key for key, found in written.items() if versions.get(key) in found}
