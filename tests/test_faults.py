"""Faults and scale-out, with real processes: item shards generated concurrently by separate
runs (multiprocess executor), a generation killed with SIGKILL and resumed, two refreshes at
once, and a run that meets a lock held by another.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import DagsterInstance

from dagster_betag import settings
from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.locks import exclusive
from dagster_betag.warehouse import tagging_scope
from tests.runs import SMALL_LLM_RUN
from tests.test_refresh import REFRESH_RUN, add_movies
from tests.test_ui import IN_PROCESS

pytestmark = pytest.mark.heavy

DAGSTER = Path(sys.executable).parent / "dagster"
TAG_OPS = {name: SMALL_LLM_RUN["ops"][name] for name in ("llm__base_tags", "llm__betags")}


@pytest.fixture
def reference(built_warehouse, tiny_model_dir):
    """The unpartitioned run: every item shard in one in-process run of the whole pipeline (read only)."""
    return built_warehouse.dataset.folder, built_warehouse.warehouse, tiny_model_dir


def environment(dataset: Path, warehouse: Path, model: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").touch()
    with DagsterInstance.from_config(str(dagster_home)):
        pass  # create the storage once, before concurrent runs race to create its tables
    return {
        **os.environ,
        settings.DATASET_ENV: str(dataset),
        settings.WAREHOUSE_ENV: str(warehouse),
        settings.MODEL_ENV: str(model),
        "DAGSTER_HOME": str(dagster_home),
        **extra,
    }


def materialize(select: str, partition: str, run_config: dict, env: dict[str, str]) -> subprocess.Popen:
    """``dagster asset materialize`` in its own process group (so a test can kill all of it)."""
    command = [
        str(DAGSTER), "asset", "materialize", "-m", "dagster_betag.definitions",
        "--select", select, "--partition", partition, "--config-json", json.dumps(run_config),
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=settings.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: int = 400) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def build_warehouse(defs, dataset: Path, warehouse: Path, model: Path, assets=None) -> None:
    """The warehouse_build job in-process, or with ``assets`` the pipeline's steps that build them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(settings.DATASET_ENV, str(dataset))
        patch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
        patch.setenv(settings.MODEL_ENV, str(model))
        job = defs.resolve_job_def("warehouse_build" if assets is None else "betag_pipeline")
        job = job if assets is None else job.get_subset(asset_selection=set(assets))
        assert job.execute_in_process(instance=DagsterInstance.ephemeral()).success


# another process reading the warehouse, as another run's step or `betag sql` does: it holds the
# file open read-only for argv[2] seconds, which keeps DuckDB from letting any process write it
HOLD_A_READER = """
import pathlib, sys, time
from dagster_betag.warehouse import connect_readonly
with connect_readonly(pathlib.Path(sys.argv[1])) as connection:
    connection.execute("select count(*) from marts.dim_items").fetchone()
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def published(warehouse: Path, table: str) -> pl.DataFrame:
    shards = sorted((warehouse / "landing" / table).glob("**/shard-*.parquet"))
    return pl.concat([pl.read_parquet(path) for path in shards], how="diagonal_relaxed")


def tags_by_item(frame: pl.DataFrame) -> dict[str, list]:
    return dict(zip(frame["item_id"].to_list(), frame["tags"].to_list(), strict=True))


def overlapping(instance_dir: Path) -> bool:
    """Whether the runs recorded in this DAGSTER_HOME ran at the same time."""
    with DagsterInstance.from_config(str(instance_dir)) as instance:
        records = instance.get_run_records()
        starts = [r.start_time for r in records]
        ends = [r.end_time for r in records]
    assert len(records) == 2 and None not in starts and None not in ends
    return max(starts) < min(ends)


def test_two_item_shards_in_concurrent_runs_give_the_unpartitioned_tags(reference, defs, tmp_path):
    dataset, reference_warehouse, model = reference
    warehouse = tmp_path / "warehouse"
    build_warehouse(defs, dataset, warehouse, model)
    for step, select in enumerate(("llm/base_tags", "llm/betags")):
        if select == "llm/betags":  # the vocabulary and adapter the reference built on the same base tags
            shutil.copy(reference_warehouse / "landing" / "current_adapter.json", warehouse / "landing")
            vocabulary = Path("landing") / "tag_vocabulary"
            shutil.copytree(reference_warehouse / vocabulary, warehouse / vocabulary)
            # the base tags that BETags are prompted with: the dbt tables over both shards' runs
            # (imported here: the dbt assets need the manifest that the defs fixture prepares)
            from dagster_betag.defs.assets.warehouse_models import base_tag_generation_models, canonical_base_tag_models

            tables = [*base_tag_generation_models.keys, *canonical_base_tag_models.keys]
            build_warehouse(defs, dataset, warehouse, model, tables)
        home = tmp_path / f"dagster-home-{step}"
        env = environment(dataset, warehouse, model, home, **{settings.ITEM_SHARDS_ENV: "2"})
        op = select.replace("/", "__")
        runs = [materialize(select, shard, {"ops": {op: TAG_OPS[op]}}, env) for shard in ("0", "1")]
        for run in runs:
            finish(run)
        assert overlapping(home), f"the two shard runs of {select} did not overlap"

    base, expected_base = published(warehouse, "base_tags"), published(reference_warehouse, "base_tags")
    assert sorted(base["item_shard"].unique().to_list()) == ["0", "1"]
    assert tags_by_item(base) == tags_by_item(expected_base)
    betags = published(warehouse, "betags").filter(pl.col("variant") == "betag")
    expected = published(reference_warehouse, "betags").filter(pl.col("variant") == "betag")
    assert tags_by_item(betags) == tags_by_item(expected)


def test_generation_killed_with_sigkill_resumes_without_duplicates_or_gaps(reference, defs, tmp_path):
    dataset, _, model = reference
    warehouse = tmp_path / "warehouse"
    build_warehouse(defs, dataset, warehouse, model)
    env = environment(dataset, warehouse, model, tmp_path / "dagster-home", **{settings.ITEM_SHARDS_ENV: "1"})
    config = {"ops": {"llm__base_tags": {"config": {"max_new_tokens": 24, "shard_size": 1}}}}
    scope = {row["item_id"] for row in tagging_scope(warehouse / "betag.duckdb", 200)}

    run = materialize("llm/base_tags", "0", config, env)
    folder = warehouse / "landing" / "base_tags"
    deadline = time.monotonic() + 240
    while not list(folder.glob("**/pending-*.parquet")):
        assert run.poll() is None and time.monotonic() < deadline, "no shard landed before the run ended"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the run and its step process, mid-generation
    run.wait()
    pending = list(folder.glob("**/pending-*.parquet"))
    assert 1 <= len(pending) < len(scope)
    assert not list(folder.glob("**/shard-*.parquet")), "nothing of the killed run is published"

    output = finish(materialize("llm/base_tags", "0", config, env))
    frame = published(warehouse, "base_tags")
    assert frame["item_id"].n_unique() == frame.height  # no duplicate
    assert set(frame["item_id"].to_list()) == scope  # no gap
    assert f"{len(pending)} of {len(scope)} items already done" in output or frame.height == len(scope)


def test_two_refreshes_at_once_both_finish_and_tag_each_new_item_once(reference, tmp_path):
    dataset_source, reference_warehouse, model = reference
    dataset, warehouse = tmp_path / "dataset", tmp_path / "warehouse"
    shutil.copytree(dataset_source, dataset)
    shutil.copytree(reference_warehouse, warehouse)
    new_ids = add_movies(dataset, 5, first_id=7001)
    env = environment(dataset, warehouse, model, tmp_path / "dagster-home")
    run_config = tmp_path / "refresh.yaml"
    # JSON is YAML; the steps of each run in its process, as a subprocess per step would import
    # the definitions (torch included) once per step: two processes meeting at the locks is the test
    run_config.write_text(json.dumps({**REFRESH_RUN, **IN_PROCESS}))
    command = [
        str(DAGSTER), "job", "execute", "-m", "dagster_betag.definitions", "-j", "catalog_refresh",
        "--config", str(run_config), "--tags", json.dumps(every_item_shard()),
    ]  # fmt: skip
    runs = [
        subprocess.Popen(command, env=env, cwd=settings.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [finish(run, timeout=500) for run in runs]

    assert any("waiting up to" in output for output in outputs), "the runs never met at a lock"
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        generations = connection.execute(
            "select item_id, count(*) from staging.stg_base_tag_generations "
            f"where item_id in ({', '.join(repr(i) for i in new_ids)}) group by item_id"
        ).fetchall()
        n_current = connection.execute("select count(distinct item_id) from marts.item_tag_versions").fetchone()[0]
    assert sorted(generations) == [(item_id, 1) for item_id in sorted(new_ids)]
    assert n_current >= len(new_ids)


def test_a_run_that_meets_a_held_lock_fails_in_one_line_and_changes_nothing(reference, defs, tmp_path, monkeypatch):
    dataset, reference_warehouse, model = reference
    warehouse = tmp_path / "warehouse"
    shutil.copytree(reference_warehouse, warehouse)
    before = (warehouse / "betag.duckdb").read_bytes()
    monkeypatch.setenv(settings.DATASET_ENV, str(dataset))
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
    monkeypatch.setenv(settings.MODEL_ENV, str(model))
    monkeypatch.setenv(settings.LOCK_TIMEOUT_ENV, "1")
    from dagster_betag.defs.resources import build_resources

    resources = build_resources()
    job = defs.resolve_job_def("warehouse_build")
    with exclusive(warehouse / "locks" / "duckdb.lock", "test", timeout_s=0):
        result = job.execute_in_process(
            instance=DagsterInstance.ephemeral(), raise_on_error=False, resources={"warehouse": resources["warehouse"]}
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = (failure.step_failure_data.error.cause or failure.step_failure_data.error).message.strip()
    assert "locked by another run" in message and f"pid {os.getpid()}" in message and "\n" not in message
    assert (warehouse / "betag.duckdb").read_bytes() == before


def test_a_reader_in_another_process_delays_the_dbt_build_instead_of_failing_it(reference, defs, tmp_path):
    dataset, reference_warehouse, model = reference
    warehouse = tmp_path / "warehouse"
    shutil.copytree(reference_warehouse, warehouse)
    command = [sys.executable, "-c", HOLD_A_READER, str(warehouse / "betag.duckdb"), "8"]
    reader = subprocess.Popen(command, cwd=settings.REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        build_warehouse(defs, dataset, warehouse, model)  # dbt would fail at once on DuckDB's lock
        # the build could only open the file once the reader had closed it and ended
        assert reader.poll() == 0
    finally:
        reader.kill()
        reader.wait(timeout=60)
