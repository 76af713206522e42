"""Durability for real: in-process catalog refreshes of a built synthetic warehouse whose tag
shards were cut short or emptied (what a power cut, a full disk or an interrupted copy
leaves), and a refresh that runs out of disk space half-way.

Each ends in a successful rerun with every item tagged exactly once and the broken file in
quarantine, or, for the full disk, in one line naming the path and the free space and a
rerun that resumes from the shards that were written.
"""

from __future__ import annotations

import errno
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance

from dagster_betag import settings
from dagster_betag.cli import _first_failure
from dagster_betag.datasets import read_dataset, write_landing
from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.files import DiskFullError
from dagster_betag.shards import QUARANTINED_SUFFIX
from dagster_betag.warehouse import tagging_scope
from tests.test_refresh import REFRESH_RUN, add_movies, metadata_of, query

pytestmark = pytest.mark.heavy

SHARD_SIZE = REFRESH_RUN["ops"]["llm__base_tags"]["config"]["shard_size"]


@pytest.fixture
def copy(built_warehouse, tiny_model_dir, tmp_path, monkeypatch):
    """A copy of the built dataset and warehouse, with the pipeline pointed at it: each test refreshes its own."""
    dataset, warehouse = built_warehouse.copy_to(tmp_path)
    monkeypatch.setenv(settings.DATASET_ENV, str(dataset))
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
    monkeypatch.setenv(settings.MODEL_ENV, str(tiny_model_dir))
    monkeypatch.setenv(settings.ADAPTERS_ENV, str(built_warehouse.adapters))
    return dataset, warehouse


def refresh(defs):
    """catalog_refresh in this process; returns the result and the run's log lines."""
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("catalog_refresh").execute_in_process(
        run_config=REFRESH_RUN, instance=instance, raise_on_error=False, tags=every_item_shard()
    )
    lines = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, lines


def base_tag_shards(warehouse: Path, prefix: str = "shard-") -> list[Path]:
    return sorted((warehouse / "landing" / "base_tags").glob(f"**/{prefix}*.parquet"))


def published_base_tags(warehouse: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(path) for path in base_tag_shards(warehouse)], how="diagonal_relaxed")


def quarantined(warehouse: Path) -> list[Path]:
    return sorted((warehouse / "landing" / "base_tags" / "quarantine").glob(f"**/*{QUARANTINED_SUFFIX}"))


def assert_tagged_exactly_once(warehouse: Path) -> None:
    """Every item of the tagging scope has one base-tag generation, in the files and in dbt's view of them."""
    scope = {row["item_id"] for row in tagging_scope(warehouse / "betag.duckdb", 200)}
    frame = published_base_tags(warehouse)
    assert frame["item_id"].n_unique() == frame.height, "an item was generated twice"
    assert set(frame["item_id"].to_list()) == scope, "an item of the scope has no base tags"
    generations = query(warehouse, "select item_id, count(*) from staging.stg_base_tag_generations group by item_id")
    assert sorted(generations) == sorted((item_id, 1) for item_id in scope)


def cut(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "zero": b""}[how])


@pytest.mark.parametrize("how", ["half", "zero"])
def test_a_cut_or_emptied_published_shard_is_quarantined_and_its_items_generated_again(copy, defs, how):
    _, warehouse = copy
    broken = base_tag_shards(warehouse)[0]
    lost_items = set(pl.read_parquet(broken)["item_id"].to_list())
    cut(broken, how)

    result, lines = refresh(defs)

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert metadata_of(result, "llm__base_tags")["n_generated"] == len(lost_items)  # those items, no other
    (moved,) = quarantined(warehouse)
    assert moved.name == broken.name + QUARANTINED_SUFFIX
    (warning,) = [line for line in lines if "quarantined unreadable shard" in line]
    assert str(broken) in warning and "\n" not in warning
    assert_tagged_exactly_once(warehouse)
    assert lost_items <= set(published_base_tags(warehouse)["item_id"].to_list())


def new_items_written(warehouse: Path, new_ids: list[str]) -> set[str]:
    """The new items in readable base-tag shards, pending or published."""
    shards = base_tag_shards(warehouse, "pending-") + base_tag_shards(warehouse)
    return {item for path in shards for item in pl.read_parquet(path)["item_id"].to_list() if item in new_ids}


def test_a_cut_pending_shard_of_a_failed_refresh_is_quarantined_when_it_resumes(copy, defs, monkeypatch):
    dataset, warehouse = copy
    new_ids = add_movies(dataset, 2 * SHARD_SIZE + 4, first_id=9501)
    from dagster_betag.shards import ShardedTable

    def machine_goes_away(table):
        raise RuntimeError("the machine went away")

    with monkeypatch.context() as patch:  # the first item shard's tags are generated, never published
        patch.setattr(ShardedTable, "publish", machine_goes_away)
        failed, _ = refresh(defs)
    assert not failed.success
    pending = base_tag_shards(warehouse, "pending-")
    assert pending, "nothing was left pending to resume from"
    kept = new_items_written(warehouse, new_ids) - set(pl.read_parquet(pending[0])["item_id"].to_list())
    cut(pending[0], "half")

    result, lines = refresh(defs)

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    # the cut shard's items are generated again, the intact pending shards' are not
    assert metadata_of(result, "llm__base_tags")["n_generated"] == len(new_ids) - len(kept)
    assert [path.name for path in quarantined(warehouse)] == [pending[0].name + QUARANTINED_SUFFIX]
    assert any(str(pending[0]) in line for line in lines if "quarantined unreadable shard" in line)
    assert not base_tag_shards(warehouse, "pending-")
    assert_tagged_exactly_once(warehouse)


def test_a_full_disk_ends_the_refresh_in_one_line_and_the_rerun_resumes(copy, defs, monkeypatch):
    dataset, warehouse = copy
    new_ids = add_movies(dataset, 2 * SHARD_SIZE + 4, first_id=9601)
    real_write, shard_writes = pl.DataFrame.write_parquet, []

    def runs_out_of_space_on_the_second_shard(frame, file, *args, **kwargs):
        if Path(file).name.startswith(".pending-") and "base_tags" in str(file):
            shard_writes.append(Path(file))
            if len(shard_writes) == 2:
                real_write(frame, file, *args, **kwargs)  # bytes on disk, as a failed write leaves them
                raise pl.exceptions.ComputeError(
                    "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"
                )
        return real_write(frame, file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pl.DataFrame, "write_parquet", runs_out_of_space_on_the_second_shard)
        failed, _ = refresh(defs)

    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure)
    assert failure.step_key == "llm__base_tags"
    message = (failure.step_failure_data.error.cause or failure.step_failure_data.error).message.strip()
    temporary = shard_writes[1]  # .<target name>.<uuid>.tmp beside the target
    target = temporary.with_name(temporary.name[1:].rsplit(".", 2)[0])
    assert DiskFullError.__name__ in message and "\n" not in message
    assert f"no space left to write {target} (" in message and " free on its disk" in message
    cli_line = _first_failure(failed)  # what `betag refresh` prints after "the run failed"
    assert "\n" not in cli_line and f"no space left to write {target}" in cli_line
    assert not target.exists() and not temporary.exists(), "the write that failed left a file"
    assert not list(warehouse.glob("landing/**/.*.tmp")), "a temporary file was left behind"
    written = new_items_written(warehouse, new_ids)
    assert written, "nothing was written before the disk filled"

    result, lines = refresh(defs)

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    base = metadata_of(result, "llm__base_tags")
    assert base["n_generated"] == len(new_ids) - len(written)  # resumed from what was written
    assert not quarantined(warehouse)
    assert_tagged_exactly_once(warehouse)


def test_a_full_disk_while_landing_keeps_the_old_landing(tmp_path, monkeypatch):
    from tests.synthetic import write_synthetic_movielens

    dataset = read_dataset(write_synthetic_movielens(tmp_path / "dataset").folder)
    landing = tmp_path / "landing"
    write_landing(dataset, landing)
    before = {path.name: path.read_bytes() for path in landing.iterdir()}
    real_write = pl.DataFrame.write_parquet

    def full(frame, file, *args, **kwargs):
        if "events" in Path(file).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(frame, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    with pytest.raises(DiskFullError, match=f"no space left to write {landing / 'events.parquet'} ") as raised:
        write_landing(dataset, landing)
    assert "\n" not in str(raised.value)
    assert {path.name: path.read_bytes() for path in landing.iterdir()} == before
