"""Resumable shards: a crash loses at most the shard in progress; a rerun completes."""

import polars as pl
import pytest

from dagster_betag.shards import run_resumable
from dagster_betag.shards import ShardedTable


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
