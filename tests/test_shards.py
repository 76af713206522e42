"""Resumable shards: a crash loses at most the shard in progress; a rerun completes. Durable
files: fsync before every rename, an unreadable shard quarantined, a full disk in one line."""

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from dagster_betag.files import DiskFullError, replacing
from dagster_betag.shards import run_resumable
from dagster_betag.shards import ShardedTable, item_shard_of


def rows_for(keys: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": keys, "value": [f"v{k}" for k in keys]})


def test_rerun_after_a_crash_resumes_without_duplicates_or_gaps(tmp_path):
    table = ShardedTable(tmp_path / "shards", {"model": "m1", "prompt_version": "p1"})
    keys = [str(i) for i in range(10)]
    produced: list[list[str]] = []

    def crash_on_third_shard(chunk, advance):
        if len(produced) == 2:
            raise RuntimeError("killed")
        produced.append(chunk)
        advance(len(chunk))
        return rows_for(chunk)

    with pytest.raises(RuntimeError):
        run_resumable(keys, table, crash_on_third_shard, shard_size=3, what="test", log=lambda _: None)
    assert table.done_keys() == set(keys[:6])
    assert not list(table.folder.glob(".*.tmp"))  # no half-written shard is left behind

    def produce(chunk, advance):
        produced.append(chunk)
        return rows_for(chunk)

    counts = run_resumable(keys, table, produce, shard_size=3, what="test", log=lambda _: None)
    assert (counts.n_skipped, counts.n_generated) == (6, 4)
    final = table.read()
    assert sorted(final["item_id"].to_list()) == keys  # each key exactly once
    assert final["model"].unique().to_list() == ["m1"]


def test_another_run_key_does_not_count_as_done(tmp_path):
    folder = tmp_path / "shards"
    ShardedTable(folder, {"prompt_version": "p1"}).write(rows_for(["a", "b"]))
    newer = ShardedTable(folder, {"prompt_version": "p2"})
    assert newer.done_keys() == set()
    newer.write(rows_for(["a"]))
    assert newer.done_keys() == {"a"}
    assert ShardedTable(folder, {"prompt_version": "p1"}).done_keys() == {"a", "b"}


def test_a_run_key_column_older_shards_lack_matches_none_of_their_rows(tmp_path):
    folder = tmp_path / "shards"
    ShardedTable(folder, {"prompt_version": "p1"}).write(rows_for(["a", "b"]))
    keyed = ShardedTable(folder, {"prompt_version": "p1", "vocabulary_id": "v1"})
    assert keyed.read().height == 0 and keyed.done_keys() == set()
    keyed.write(rows_for(["a"]))
    assert keyed.done_keys() == {"a"}


def test_pending_shards_are_published_only_at_the_end_of_a_run(tmp_path):
    table = ShardedTable(tmp_path / "shards", {"model": "m1"}, item_shard="2")
    other_run = ShardedTable(tmp_path / "shards", {"model": "m2"}, item_shard="2")
    table.write(rows_for(["a"]))
    other_run.write(rows_for(["b"]))
    assert table.read(published_only=True) is None and table.done_keys() == {"a"}  # resumable, not visible

    assert table.publish() == 1
    assert table.read(published_only=True)["item_id"].to_list() == ["a"]
    assert list(table.shard_folder.glob("pending-*")) != []  # the other run's shard stays pending
    assert table.read(published_only=True)["item_shard"].to_list() == ["2"]


def test_a_read_lists_again_when_a_concurrent_run_publishes_a_listed_shard(tmp_path, monkeypatch):
    """Two item-shard runs at once: one reads every shard while the other renames its pending
    shards to published ones; the rows are still there, under the new names."""
    table = ShardedTable(tmp_path / "shards", {"model": "m1"}, item_shard="0")
    other_run = ShardedTable(tmp_path / "shards", {"model": "m1"}, item_shard="1")
    table.write(rows_for(["a"]))
    other_run.write(rows_for(["b"]))
    listed = table.shards()
    real_rows_of = ShardedTable._rows_of

    def publish_after_listing(self, shards):
        if shards == listed and other_run.shards(published_only=True) == []:
            other_run.publish()  # between this read's listing and its reading
        return real_rows_of(self, shards)

    monkeypatch.setattr(ShardedTable, "_rows_of", publish_after_listing)
    assert sorted(table.read()["item_id"].to_list()) == ["a", "b"]


def test_a_key_is_done_only_for_the_input_it_was_generated_from(tmp_path):
    table = ShardedTable(tmp_path / "shards", {"model": "m1"}, version_column="input_hash")
    table.write(rows_for(["a", "b"]).with_columns(input_hash=pl.Series(["h1", "h2"])))
    assert table.done_keys({"a": "h1", "b": "changed"}) == {"a"}

    counts = run_resumable(
        ["a", "b", "c"], table,
        lambda chunk, advance: rows_for(chunk).with_columns(input_hash=pl.lit("new")),
        shard_size=5, what="test", log=lambda _: None, versions={"a": "h1", "b": "new", "c": "new"},
    )  # fmt: skip
    assert (counts.n_skipped, counts.n_generated, counts.n_changed) == (1, 2, 1)


def test_item_shards_are_stable_and_cover_every_item():
    ids = [str(i) for i in range(1000)]
    shards = [item_shard_of(item_id, 4) for item_id in ids]
    assert set(shards) == {"0", "1", "2", "3"}
    assert min(shards.count(s) for s in "0123") > 200  # balanced enough to parallelize
    # the same in another process with another hash seed (Python's hash() would differ)
    script = "from dagster_betag.shards import item_shard_of; print(''.join(item_shard_of(str(i), 4) for i in range(1000)))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})  # fmt: skip
    assert other.stdout.strip() == "".join(shards)


# --- durability: fsync before every rename, quarantine of unreadable shards, a full disk ----------


def record_syncs_and_renames(monkeypatch) -> list[tuple]:
    """Every fsync (by the path of its descriptor) and rename, in call order."""
    calls: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target):
        calls.append(("rename", str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_replacing_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "new" / "table.parquet"
    calls = record_syncs_and_renames(monkeypatch)
    with replacing(target) as temporary:
        temporary.write_bytes(b"complete")
    (rename,) = [call for call in calls if call[0] == "rename"]
    assert rename[2] == str(target)
    position = calls.index(rename)
    assert ("fsync", rename[1]) in calls[:position]  # the bytes first
    assert ("fsync", str(target.parent)) in calls[position:]  # then the name
    assert ("fsync", str(tmp_path)) in calls[:position]  # and the folder it created, in its parent
    assert target.read_bytes() == b"complete"


def test_publish_renames_durably(tmp_path, monkeypatch):
    table = ShardedTable(tmp_path / "shards", {"model": "m1"})
    pending = table.write(rows_for(["a"]))
    calls = record_syncs_and_renames(monkeypatch)
    assert table.publish() == 1
    published = pending.with_name(pending.name.replace("pending-", "shard-"))
    assert calls == [("fsync", str(pending)), ("rename", str(pending), str(published)), ("fsync", str(pending.parent))]


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what polars raises (its Rust error wrapped): no errno, only the text
        pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: No space left on device (os error 28)"),
    ],
    ids=["OSError", "polars"],
)
def test_a_full_disk_publishes_nothing_and_says_where_in_one_line(tmp_path, failure):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(DiskFullError) as raised:
        with replacing(target) as temporary:
            temporary.write_bytes(b"half of the ne")
            raise failure
    message = str(raised.value)
    assert str(target) in message and " free on its disk" in message and "\n" not in message
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_other_write_errors_stay_what_they_are(tmp_path):
    with pytest.raises(PermissionError):
        with replacing(tmp_path / "table.parquet"):
            raise PermissionError(errno.EACCES, "Permission denied")


def break_shard(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "zero": b""}[how])


DBT_SOURCE_GLOB = "read_parquet('{folder}/**/shard-*.parquet', union_by_name = true, hive_partitioning = false)"


@pytest.mark.parametrize("how", ["half", "zero"])
def test_an_unreadable_published_shard_is_quarantined_and_the_rest_read(tmp_path, how):
    table = ShardedTable(tmp_path / "shards", {"model": "m1"}, item_shard="0")
    table.write(rows_for(["a", "b"]))
    table.write(rows_for(["c"]))
    table.publish()
    broken = table.shards()[0]
    break_shard(broken, how)
    broken_bytes = broken.read_bytes()
    lines: list[str] = []

    frame = table.read(log=lines.append)

    assert sorted(frame["item_id"].to_list()) == ["c"]
    (quarantined,) = table.quarantine_folder.rglob("*.quarantined")
    assert quarantined.name == broken.name + ".quarantined" and quarantined.parent.name == "item_shard=0"
    assert quarantined.read_bytes() == broken_bytes  # moved as it was, for a human to look at
    (line,) = lines
    assert str(broken) in line and str(quarantined) in line and "\n" not in line
    assert ("zero-length" in line) == (how == "zero")
    assert "item ids cannot be read" in line
    # neither the listing here nor dbt's source glob sees the quarantined file
    assert table.shards() == [path for path in table.shards() if table.quarantine_folder not in path.parents]
    dbt_view = duckdb.sql(f"select item_id from {DBT_SOURCE_GLOB.format(folder=table.folder)}").fetchall()
    assert dbt_view == [("c",)]


def test_a_shard_without_the_key_column_is_quarantined_but_no_readable_shard_is(tmp_path):
    folder = tmp_path / "shards"
    old = ShardedTable(folder, {"prompt_version": "p1"})
    old.write(rows_for(["a"]))  # readable, of another run key: kept
    (old.shard_folder / "pending-x-1-y.parquet").write_bytes(_parquet_bytes(pl.DataFrame({"value": ["v"]})))
    keyed = ShardedTable(folder, {"prompt_version": "p1", "vocabulary_id": "v1"})  # a key the old shard lacks
    lines: list[str] = []
    assert keyed.quarantine_unreadable(lines.append) == 1
    assert "no item_id column" in lines[0]
    assert old.done_keys() == {"a"} and len(old.shards()) == 1


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def test_a_run_regenerates_the_items_of_a_cut_pending_shard_and_counts_it(tmp_path):
    table = ShardedTable(tmp_path / "shards", {"model": "m1"})
    keys = [str(i) for i in range(6)]
    first = table.write(rows_for(keys[:3]))
    table.write(rows_for(keys[3:5]))  # pending shards of a run that failed before publishing
    break_shard(first, "half")
    produced: list[str] = []
    lines: list[str] = []

    def produce(chunk, advance):
        produced.extend(chunk)
        return rows_for(chunk)

    counts = run_resumable(keys, table, produce, shard_size=2, what="test", log=lines.append)

    assert sorted(produced) == ["0", "1", "2", "5"]
    assert (counts.n_quarantined, counts.n_skipped, counts.n_generated) == (1, 2, 4)
    assert sorted(table.read(published_only=True)["item_id"].to_list()) == keys
    assert any(str(first) in line for line in lines)
    assert (counts + counts).n_quarantined == 2
