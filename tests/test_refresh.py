"""Catalog refresh for real: in-process Dagster runs of catalog_refresh over a growing catalog.

A refresh tags the items that are new or whose description changed and nothing else; every
generation stays queryable in marts.item_tag_versions; a refresh that fails half-way leaves
marts.item_tags_current as it was; the schedules and the sensor decide from real files.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, RunRequest, SkipReason, build_schedule_context, build_sensor_context

from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.defs.resources import DatasetResource, WarehouseResource
from dagster_betag.refresh import behavior_growth
from dagster_betag.warehouse import WarehouseLayout, summarize
from tests.runs import SMALL_LLM_RUN
from tests.synthetic import write_synthetic_movielens

pytestmark = pytest.mark.heavy

REFRESH_RUN = {"ops": {name: SMALL_LLM_RUN["ops"][name] for name in ("llm__base_tags", "llm__betags")}}


def refresh(defs):
    job = defs.resolve_job_def("catalog_refresh")
    return job.execute_in_process(
        run_config=REFRESH_RUN, instance=DagsterInstance.ephemeral(), raise_on_error=False, tags=every_item_shard()
    )


def add_movies(folder: Path, n: int, first_id: int) -> list[str]:
    """Append ``n`` new films (no ratings) to movies.csv; returns their ids."""
    ids = [str(first_id + i) for i in range(n)]
    with (folder / "movies.csv").open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows((item_id, f"Brand New Film {item_id} (2026)", "Drama|Sci-Fi") for item_id in ids)
    return ids


def retitle_movie(folder: Path, item_id: str, title: str) -> None:
    path = folder / "movies.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows = [[row[0], title, *row[2:]] if row[0] == item_id else row for row in rows]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def metadata_of(result, node: str) -> dict:
    materialization = result.asset_materializations_for_node(node)[0]
    return {key: value.value for key, value in materialization.metadata.items()}


def query(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def catalog(built_warehouse, tiny_model_dir, tmp_path_factory):
    """A copy of the built warehouse (adapter included), refreshed by the tests in order."""
    dataset, warehouse = built_warehouse.copy_to(tmp_path_factory.mktemp("refresh"))
    with pytest.MonkeyPatch.context() as patch:  # the refreshes read the same folders
        patch.setenv("BETAG_DATASET_DIR", str(dataset))
        patch.setenv("BETAG_WAREHOUSE_DIR", str(warehouse))
        patch.setenv("BETAG_MODEL", str(tiny_model_dir))
        yield dataset, warehouse


def test_refresh_after_adding_20_items_tags_exactly_those_20(catalog, defs):
    dataset, warehouse = catalog
    versions_before = query(warehouse, "select item_id, tag_source, generated_at from marts.item_tag_versions")
    new_ids = add_movies(dataset, 20, first_id=9001)

    result = refresh(defs)

    assert result.success, [e.message for e in result.all_events if e.is_failure]
    base, betags = metadata_of(result, "llm__base_tags"), metadata_of(result, "llm__betags")
    assert (base["n_generated"], base["n_new"], base["n_changed"]) == (20, 20, 0)
    assert base["n_skipped_already_done"] == len({item for item, source, _ in versions_before if source == "base"})
    assert betags["n_generated"] == 20
    arrivals = query(warehouse, "select item_id from marts.dim_items where is_added_after_first_load")
    assert sorted(item for (item,) in arrivals) == sorted(new_ids)
    # each new item has exactly one base and one BETag generation; the old ones are untouched
    versions = query(warehouse, "select item_id, tag_source, generated_at from marts.item_tag_versions")
    new_versions = [(item, source) for item, source, _ in versions if item in new_ids]
    assert sorted(new_versions) == sorted((item, source) for item in new_ids for source in ("base", "betag"))
    assert sorted(v for v in versions if v[0] not in new_ids) == sorted(versions_before)


def test_changed_description_is_tagged_again_and_the_old_version_stays(catalog, defs):
    dataset, warehouse = catalog
    (item_id,) = query(warehouse, "select item_id from marts.item_tag_versions where tag_source = 'base' limit 1")[0]
    retitle_movie(dataset, item_id, "A Completely Different Film (1999)")

    result = refresh(defs)

    assert result.success
    base = metadata_of(result, "llm__base_tags")
    assert (base["n_generated"], base["n_changed"], base["n_new"]) == (1, 1, 0)
    history = query(
        warehouse,
        "select version_rank, is_current, input_hash from marts.item_tag_versions "
        f"where item_id = '{item_id}' and tag_source = 'base' order by version_rank",
    )
    assert [(rank, current) for rank, current, _ in history] == [(1, True), (2, False)]
    assert history[0][2] != history[1][2]  # the new generation saw the new description


def test_a_refresh_that_fails_half_way_leaves_the_current_tags_intact(catalog, defs, monkeypatch):
    dataset, warehouse = catalog
    current_sql = "select * from marts.item_tags_current order by all"
    before = query(warehouse, current_sql)
    new_ids = add_movies(dataset, 6, first_id=9101)
    import dagster_betag.llm.base_tags as base_tags

    real, calls = base_tags.generate_base_tags, []

    def fails_on_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the machine went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(base_tags, "generate_base_tags", fails_on_the_second_shard)
    run_config = {"ops": {**REFRESH_RUN["ops"], "llm__base_tags": {"config": {"max_new_tokens": 16, "shard_size": 1}}}}
    job = defs.resolve_job_def("catalog_refresh")
    failed = job.execute_in_process(
        run_config=run_config, instance=DagsterInstance.ephemeral(), raise_on_error=False, tags=every_item_shard()
    )
    assert not failed.success
    landed = list((warehouse / "landing" / "base_tags").glob("**/pending-*.parquet"))
    assert landed, "the shard written before the failure is kept, pending, for the rerun"
    # a dbt build in between (another job) must not publish the half-done refresh
    tag_tables = defs.resolve_job_def("betag_pipeline").get_subset(asset_selection=set(tag_table_keys(defs)))
    assert tag_tables.execute_in_process(instance=DagsterInstance.ephemeral(), tags=every_item_shard()).success
    assert query(warehouse, current_sql) == before

    monkeypatch.setattr(base_tags, "generate_base_tags", real)
    rerun = job.execute_in_process(run_config=run_config, instance=DagsterInstance.ephemeral(), tags=every_item_shard())
    base = metadata_of(rerun, "llm__base_tags")
    assert base["n_generated"] == len(new_ids) - 1  # the shard that landed before the failure is not redone
    current_items = {item for (item,) in query(warehouse, "select distinct item_id from marts.item_tag_versions")}
    assert set(new_ids) <= current_items
    duplicates = query(
        warehouse,
        "select item_id, input_hash, count(*) from staging.stg_base_tag_generations group by all having count(*) > 1",
    )
    assert duplicates == []


def tag_table_keys(defs):
    return [key for key in defs.resolve_all_asset_keys() if key.path[0] == "marts" and "tag" in key.path[-1]]


def test_weekly_refinetune_runs_only_when_enough_behavior_arrived(catalog, monkeypatch):
    from dagster_betag.defs.schedules import build_schedules  # imports the assets: after the manifest fixture

    weekly_refinetune = next(schedule for schedule in build_schedules() if schedule.name == "weekly_refinetune")

    _, warehouse = catalog
    resource = WarehouseResource(directory=str(warehouse))
    monkeypatch.setenv("BETAG_REFINETUNE_MIN_NEW_INTERACTIONS", "1")
    with build_schedule_context(resources={"warehouse": resource}) as context:
        skipped = weekly_refinetune(context)
    assert isinstance(skipped, SkipReason) and "0 new learnable train interactions" in skipped.skip_message
    # what the adapter learned from is the learnable behavior, not interactions with new items
    counts = summarize(WarehouseLayout(warehouse).database_path)
    assert behavior_growth(WarehouseLayout(warehouse)).n_learnable_now == counts["learnable_train_interactions"]
    assert counts["learnable_train_interactions"] < counts["train_interactions"]

    monkeypatch.setenv("BETAG_REFINETUNE_MIN_NEW_INTERACTIONS", "0")
    with build_schedule_context(resources={"warehouse": resource}) as context:
        request = weekly_refinetune(context)
    assert isinstance(request, RunRequest)
    assert request.tags["launched_by"] == "weekly_refinetune" and "llm__finetune_examples" in request.run_config["ops"]


def test_sensor_launches_a_refresh_when_an_input_file_changes(dbt_manifest, tmp_path):
    from dagster_betag.defs.sensors import new_input_files  # imports the assets: after the manifest fixture

    dataset = write_synthetic_movielens(tmp_path / "dataset")
    resource = DatasetResource(path=str(dataset.folder))
    with build_sensor_context(resources={"dataset": resource}) as context:
        baseline = new_input_files(context)
        cursor = context.cursor
    assert isinstance(baseline, SkipReason) and cursor
    with build_sensor_context(cursor=cursor, resources={"dataset": resource}) as context:
        assert isinstance(new_input_files(context), SkipReason)
    add_movies(dataset.folder, 1, first_id=9999)
    with build_sensor_context(cursor=cursor, resources={"dataset": resource}) as context:
        request = new_input_files(context)
        assert context.cursor != cursor
    assert isinstance(request, RunRequest) and request.run_key == context.cursor
    assert request.tags["launched_by"] == "new_input_files"
    shutil.rmtree(dataset.folder)
