"""The whole pipeline, for real: Dagster in-process, the dataset adapter, dbt build, DuckDB.

One run over a synthetic MovieLens-layout dataset with known defects is checked against
plain-Python references of the k-core, the leave-one-out split and the sessions.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance

from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.defs.resources import LLMResource
from dagster_betag.evaluation.tag_sources import registered_paired_comparisons, tag_source_names
from dagster_betag.hashing import stable_hash
from dagster_betag.warehouse import fetch_rows, natively_tagged_items
from tests.runs import SMALL_LLM_RUN, run_pipeline
from tests.synthetic import (
    reference_kcore,
    reference_sessions,
    reference_split,
)

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def built(built_warehouse):
    """One successful run over the synthetic dataset with the tiny model; tests read its warehouse."""
    connection = duckdb.connect(str(built_warehouse.warehouse / "betag.duckdb"), read_only=True)
    yield built_warehouse.dataset, built_warehouse.result, connection
    connection.close()


def query(connection, sql: str) -> list[tuple]:
    return connection.execute(sql).fetchall()


def test_definitions_expose_sources_landing_models_checks_and_job(defs):
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"source/dataset_files", "landing/events", "landing/items"} <= keys
    assert {"staging/stg_events", "intermediate/int_interactions_split", "marts/fct_behavior_sessions", "marts/dim_items"} <= keys
    check_keys = defs.resolve_asset_graph().asset_check_keys
    assert any(c.name == "assert_no_eval_targets_in_training_sessions" for c in check_keys)
    assert defs.resolve_job_def("betag_pipeline") is not None


def test_run_materializes_every_model_with_row_counts_and_previews(built, defs):
    _, result, connection = built
    materialized = {m.asset_key: m for m in result.asset_materializations_for_node("warehouse_models")}
    dim_items = materialized[AssetKey(["marts", "dim_items"])]
    n_rows = query(connection, "select count(*) from marts.dim_items")[0][0]
    assert dim_items.metadata["dagster/row_count"].value == n_rows
    assert "| item_id |" in dim_items.metadata["preview"].value
    landing = {m.asset_key for m in result.asset_materializations_for_node("landing_tables")}
    assert AssetKey(["landing", "native_tags"]) in landing
    checks = result.get_asset_check_evaluations()
    # the BETag claims only WARN (random tiny-model tags may lose); every data test must pass
    claims = {
        "betag_beats_base_and_native", "betag_beats_propagated_on_cold", "betag_beats_propagated_on_new",
        "betag_ablation_order",
    }  # fmt: skip
    assert checks and all(check.passed for check in checks if check.check_name not in claims)
    assert {check.check_name for check in checks} >= claims | {"llm_tag_documents_not_empty"}
    for check in checks:
        if check.check_name in claims:
            assert check.severity.value == "WARN" and "| bm25 | user |" in check.metadata["comparison"].value


def test_base_tags_go_through_the_tag_vocabulary(built):
    _, result, connection = built
    metadata = result.asset_materializations_for_node("llm__tag_vocabulary")[0].metadata
    assert metadata["n_distinct_after"].value <= metadata["n_distinct_before"].value
    joined = "from marts.item_base_tags b join staging.stg_tag_vocabulary v on b.raw_tag = v.raw_tag"
    # every base tag went through the vocabulary: it is its raw tag's canonical form, never junk
    n_tags = query(connection, "select count(*) from marts.item_base_tags")[0][0]
    assert n_tags > 0 and query(connection, f"select count(*) {joined}")[0][0] == n_tags
    changed = query(connection, f"select count(*) {joined} where b.tag is distinct from v.canonical_tag or v.is_dropped")
    assert changed == [(0,)]


def test_catalog_few_shot_examples_are_the_items_with_most_native_tags(built):
    _, _, connection = built
    (path,) = query(connection, "select path from duckdb_databases() where database_name = current_database()")[0]
    rows = natively_tagged_items(Path(path), n=2, min_tags=1)
    counts = dict(query(connection, "select item_id, count(*) from marts.fct_item_native_tags group by 1"))
    assert len(rows) == 2 and [counts[r["item_id"]] for r in rows] == sorted(counts.values(), reverse=True)[:2]
    assert all(len(r["native_tags"]) == counts[r["item_id"]] and r["title"] for r in rows)


def test_quarantine_keeps_every_defective_row_with_its_reason(built):
    dataset, _, connection = built
    found = Counter(
        {(table, reason): n for table, reason, n in query(
            connection,
            "select source_table, rejection_reason, count(*) from staging.stg_quarantined_rows group by all",
        )}
    )
    n_rejected_attributes = query(
        connection,
        "select count(*) from staging.base_item_attributes "
        f"where source_row in ({', '.join(map(str, dataset.rejected_item_rows))})",
    )[0][0]
    assert n_rejected_attributes > 0
    assert found == dataset.expected_quarantine + Counter({("item_attributes", "rejected_item"): n_rejected_attributes})
    landed = query(connection, "select count(*) from staging.base_events")[0][0]
    kept = query(connection, "select count(*) from staging.stg_events")[0][0]
    assert landed == kept + sum(n for (table, _), n in found.items() if table == "events")


def test_kcore_matches_iterated_reference(built):
    dataset, _, connection = built
    expected = {e.event_id for e in reference_kcore(dataset.valid_events, 5, 5)}
    found = {row[0] for row in query(connection, "select event_id from intermediate.int_interactions_filtered")}
    assert found == expected
    # the synthetic data must exercise the filter: something is removed, something is kept
    assert 0 < len(expected) < len(dataset.valid_events)


def test_leave_one_out_split_matches_reference(built):
    dataset, _, connection = built
    expected = reference_split(reference_kcore(dataset.valid_events, 5, 5))
    found = {
        event_id: (position, split)
        for event_id, position, split in query(connection, "select event_id, position, split from marts.fct_interactions")
    }
    assert found == expected
    # ties at the last timestamp exist in the data, so the tie-break rule is exercised
    last_ties = query(
        connection,
        "select count(*) from marts.fct_interactions t join marts.fct_interactions o "
        "on t.user_id = o.user_id and t.event_at = o.event_at and t.event_id <> o.event_id "
        "where t.split = 'test'",
    )[0][0]
    assert last_ties > 0


def test_sessions_match_reference_and_never_contain_targets(built):
    dataset, _, connection = built
    kept = reference_kcore(dataset.valid_events, 5, 5)
    expected = sorted(reference_sessions(kept, gap_minutes=30, max_items=50, min_items=2, new_item_share=0.2))
    found = sorted(row[0] for row in query(connection, "select item_ids from marts.fct_behavior_sessions"))
    assert found == expected
    leaked = query(
        connection,
        "select count(*) from marts.fct_interactions i "
        "where i.split <> 'train' and i.session_id is not null",
    )[0][0]
    assert leaked == 0


def test_catalog_keeps_cold_items_and_parses_movielens_titles(built):
    dataset, _, connection = built
    n_catalog = query(connection, "select count(*) from marts.dim_items")[0][0]
    n_in_kcore = query(connection, "select count(*) from marts.dim_items where is_in_kcore")[0][0]
    assert n_catalog == 30 and 0 < n_in_kcore < n_catalog
    title, year = query(connection, "select title, attributes['year'][1] from marts.dim_items where item_id = '4'")[0]
    assert (title, year) == ("The Movie 4", "1984")
    tags = query(connection, "select tag, n_taggings from marts.fct_item_native_tags where item_id = '1'")
    assert tags == [("pixar", 2)]


def test_every_kcore_item_gets_base_tags_and_betags_with_all_beams(built):
    _, result, connection = built
    n_kcore = query(connection, "select count(*) from marts.dim_items where is_in_kcore")[0][0]
    assert query(connection, "select count(distinct item_id) from staging.stg_base_tag_generations")[0][0] == n_kcore
    beams = query(connection, "select item_id, count(*), bool_or(is_base_tags) from marts.item_betag_beams group by 1")
    assert len(beams) == n_kcore and all(n == 1 + 2 and has_base for _, n, has_base in beams)
    documents = query(connection, "select tag_source, count(*) from marts.item_tag_documents group by 1")
    sources = list(tag_source_names())
    assert dict(documents) == dict.fromkeys(sources, n_kcore)
    # an item with base tags has tags from every LLM source (base tags are beam 0 of each generation)
    empty = query(
        connection,
        "select tag_source, item_id from marts.item_tag_documents d where tag_source <> 'native' and n_tags = 0 "
        "and item_id in (select item_id from marts.item_tag_documents where tag_source = 'base' and n_tags > 0)",
    )
    assert empty == []
    variants = query(
        connection,
        "select variant, count(distinct item_id), max(len(beam_texts)) from marts.item_betag_beams "
        "right join intermediate.int_betag_generations_selected using (item_id) group by 1",
    )
    # the ablations decode one beam without multi-beam, all beams otherwise
    assert {v: (n, beams) for v, n, beams in variants} == {
        "betag": (n_kcore, 2), "no_finetune": (n_kcore, 2), "one_beam": (n_kcore, 1), "neither": (n_kcore, 1)
    }
    # the one-beam variants are group 0 of their model's diverse decode, not decoded again
    group_0 = query(
        connection,
        "select one.variant, count(*), count(*) filter (where one.beam_texts[1] = diverse.beam_texts[1]) "
        "from intermediate.int_betag_generations_selected one join intermediate.int_betag_generations_selected diverse "
        "using (item_id) where (one.variant = 'one_beam' and diverse.variant = 'betag') "
        "or (one.variant = 'neither' and diverse.variant = 'no_finetune') "
        "group by 1",
    )
    assert sorted(group_0) == [("neither", n_kcore, n_kcore), ("one_beam", n_kcore, n_kcore)]
    betags = next(m for m in result.asset_materializations_for_node("llm__betags"))
    assert betags.metadata["one_beam/from_first_group_of_a_diverse_decode"].value is True
    # does the decode carry behavior: every decoded item measured, each share in [0, 1]
    assert betags.metadata["fit/n_items"].value == n_kcore
    for name in ("in_sample_fit", "in_sample_fit_of_base_tags", "in_sample_fit_of_other_items", "beam_jaccard"):
        assert 0 <= betags.metadata[f"fit/{name}"].value <= 1, name
    adapter = next(m for m in result.asset_materializations_for_node("llm__behavior_adapter"))
    assert (Path(adapter.metadata["folder"].value) / "adapter_model.safetensors").exists()
    assert "data:image/png;base64" in adapter.metadata["loss_curve"].value


def test_evaluation_covers_every_source_method_setting_and_protocol(built):
    _, result, connection = built
    cells = query(
        connection,
        "select tag_source, method, setting, protocol, count(distinct split), max(n_candidates), min(n_users) "
        "from marts.eval_results where bucket = 'all' and not contains(tag_source, ':') group by all",
    )
    found = {(source, method, setting, protocol) for source, method, setting, protocol, *_ in cells}
    sources = list(tag_source_names())
    expected = {
        (source, method, setting, protocol)
        for source in sources
        for method in ("bm25", "birank")
        for setting in ("user", "item")
        for protocol in ("full", "sampled")
    } | {("none", "popular", setting, protocol) for setting in ("user", "item") for protocol in ("full", "sampled")}
    recommenders = {
        (source, method, setting, protocol)
        for method, sources_read, settings in (
            ("sasrec", ["none"], ("user", "item")),
            ("als", ["none"], ("user",)),  # no sequence input, so no item setting
            ("unisrec", ["native", "base", "betag", "propagated"], ("user", "item")),
        )
        for source in sources_read
        for setting in settings
        for protocol in ("full", "sampled")
    }
    assert found == expected | recommenders
    n_items = query(connection, "select count(*) from marts.dim_items where is_in_kcore")
    assert query(connection, "select distinct n_items from marts.eval_results") == n_items
    n_items = n_items[0][0]
    for _, method, _, protocol, n_splits, n_candidates, n_users in cells:
        # recommenders report test only: validation drives their early stopping
        assert n_splits == (1 if method in ("sasrec", "als", "unisrec") else 2) and n_users > 0
        if protocol == "full":
            assert n_candidates == n_items
        else:
            assert n_candidates <= min(100, n_items)
    curve = query(
        connection,
        "select tag_source, list(distinct split order by split), list(distinct protocol) from marts.eval_results "
        "where contains(tag_source, ':') group by 1",
    )
    # the beam-count curve and the aggregation levers, on both splits, full ranking only
    levers = {"betag:1_beams", "betag:2_beams", "betag:top10", "betag:top15", "betag:top30", "betag:weighted"}
    levers |= {"betag:specific", "betag:idf"}
    assert {source: (splits, protocols) for source, splits, protocols in curve} == dict.fromkeys(
        levers, (["test", "validation"], ["full"])
    )
    metadata = result.asset_materializations_for_node("evaluation__eval_results")[0].metadata
    assert "Table 1: tag-based retrieval" in metadata["tables"].value
    assert "Table 3: ablations" in metadata["tables"].value
    assert "Table 2: recommendation" in metadata["tables"].value
    charts = Path(metadata["charts_folder"].value)
    assert {p.name for p in charts.glob("*.png")} == {"n_at_10_by_method.png", "beam_count_curve.png", "tag_popularity.png"}


def test_rerun_skips_items_already_tagged(built_warehouse, defs, point_at, tiny_model_dir, monkeypatch, tmp_path):
    first = built_warehouse.result
    adapters = Path(first.asset_materializations_for_node("llm__behavior_adapter")[0].metadata["folder"].value).parent
    monkeypatch.setenv("BETAG_ADAPTERS_DIR", str(adapters))
    dataset, warehouse = built_warehouse.copy_to(tmp_path)  # other modules read the original
    point_at(dataset, warehouse, tiny_model_dir)
    job = defs.resolve_job_def("betag_pipeline").get_subset(asset_selection={AssetKey(["llm", "base_tags"])})
    run_config = {"ops": {"llm__base_tags": SMALL_LLM_RUN["ops"]["llm__base_tags"]}}
    # nothing is left to tag, so the model's weights are never loaded (its identity keys the shards)
    with monkeypatch.context() as patched:
        patched.setattr(LLMResource, "load", lambda self: pytest.fail("loaded the model with nothing to tag"))
        again = job.execute_in_process(run_config=run_config, instance=DagsterInstance.ephemeral(), tags=every_item_shard())
    metadata = again.asset_materializations_for_node("llm__base_tags")[0].metadata
    assert metadata["n_generated"].value == 0 and metadata["n_skipped_already_done"].value > 0
    # the adapter of unchanged inputs is found under its id, not trained again
    keys = {AssetKey(["llm", "finetune_examples"]), AssetKey(["llm", "behavior_adapter"])}
    job = defs.resolve_job_def("betag_pipeline").get_subset(asset_selection=keys)
    ops = {name: SMALL_LLM_RUN["ops"][name] for name in ("llm__behavior_adapter",)}
    retrained = job.execute_in_process(run_config={"ops": ops}, instance=DagsterInstance.ephemeral())
    adapter = retrained.asset_materializations_for_node("llm__behavior_adapter")[0].metadata
    first_adapter = first.asset_materializations_for_node("llm__behavior_adapter")[0].metadata
    assert adapter["reused_existing_adapter"].value is True
    assert first_adapter["reused_existing_adapter"].value is False
    assert adapter["adapter_id"].value == first_adapter["adapter_id"].value


def test_bad_input_fails_with_one_line_and_leaves_the_warehouse_intact(built, defs, point_at, tiny_model_dir, tmp_path):
    dataset, _, _ = built
    warehouse = tmp_path / "warehouse"
    point_at(dataset.folder, warehouse, tiny_model_dir)
    assert run_pipeline(defs, SMALL_LLM_RUN).success
    before = (warehouse / "landing" / "events.parquet").read_bytes()
    n_events = _count(warehouse, "marts.fct_interactions")

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("movies.csv", "tags.csv"):
        (broken / name).write_bytes((dataset.folder / name).read_bytes())
    (broken / "ratings.csv").write_bytes(b"")
    point_at(broken, warehouse)
    result = run_pipeline(defs)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = (failure.step_failure_data.error.cause or failure.step_failure_data.error).message
    assert "ratings.csv" in message and "empty" in message.lower()
    assert (warehouse / "landing" / "events.parquet").read_bytes() == before
    assert _count(warehouse, "marts.fct_interactions") == n_events


def _count(warehouse: Path, relation: str) -> int:
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        return connection.execute(f"select count(*) from {relation}").fetchone()[0]


def test_cli_shows_an_items_tags_and_answers_read_only_sql(built, tmp_path):
    from tests.test_cli import run_betag

    _, _, connection = built
    (database,) = query(connection, "select path from duckdb_databases() where database_name = current_database()")[0]
    warehouse = str(Path(database).parent)
    item_id, title = query(
        connection,
        "select i.item_id, i.title from marts.item_betags b join marts.dim_items i using (item_id) "
        "order by i.item_id limit 1",
    )[0]
    shown = run_betag("tags", item_id, "--warehouse", warehouse)
    assert shown.returncode == 0, shown.stderr
    assert f"{title} (item {item_id})" in shown.stdout
    base = [tag for (tag,) in query(connection, f"select tag from marts.item_base_tags where item_id = '{item_id}' order by tag_rank")]
    assert f"base tags ({len(base)}): {', '.join(base) or '-'}" in shown.stdout
    for tag, weight in query(connection, f"select tag, weight from marts.item_betags where item_id = '{item_id}'"):
        assert f"| {tag} | {weight} |" in shown.stdout
    unknown = run_betag("tags", "no such item anywhere", "--warehouse", warehouse)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1

    (n_items,) = query(connection, "select count(*) from marts.dim_items")[0]
    answered = run_betag("sql", "select count(*) as n_items from marts.dim_items", "--warehouse", warehouse)
    assert answered.returncode == 0 and f"| {n_items} |" in answered.stdout
    tables_before = query(connection, "select count(*) from information_schema.tables")
    leak = tmp_path / "leak.csv"
    for statement in (
        "create table marts.scratch as select 1 as x",
        "delete from marts.dim_items",
        f"copy (select * from marts.dim_items) to '{leak}'",
        f"attach '{tmp_path / 'other.duckdb'}' as other",
        "selec 1",
    ):
        refused = run_betag("sql", statement, "--warehouse", warehouse)
        assert refused.returncode == 1, statement
        assert refused.stderr.startswith("betag: error:") and refused.stderr.count("\n") == 1, refused.stderr
    assert not leak.exists() and not (tmp_path / "other.duckdb").exists()
    assert query(connection, "select count(*) from information_schema.tables") == tables_before
    assert query(connection, "select count(*) from marts.dim_items")[0][0] == n_items


def test_betags_are_prompted_with_the_base_tags_the_marts_show(built):
    """One definition of an item's current base tags: the BETag prompt's input (its hash is
    each generation's input_hash) is exactly marts.item_base_tags of that item, in rank order."""
    _, _, connection = built
    shown = dict(query(connection, "select item_id, list(tag order by tag_rank) from marts.item_base_tags group by item_id"))
    prompted = query(connection, "select item_id, input_hash from intermediate.int_betag_generations_selected where variant = 'betag'")
    assert prompted
    # (an item whose base tags the vocabulary dropped entirely is prompted with none, as shown)
    for item_id, input_hash in prompted:
        assert input_hash == stable_hash(list(shown.get(item_id, []))), item_id
    # and the tag vocabulary was built from the current generations dbt shows
    raw = dict(query(connection, "select item_id, tags from intermediate.int_base_tag_generations_current"))
    assert set(dict(query(connection, "select item_id, 1 from marts.item_base_tags"))) <= set(raw)


def table(connection, relation: str) -> pl.DataFrame:
    columns, rows = fetch_rows(connection, f"select * from {relation}")
    return pl.DataFrame(rows, schema=columns, orient="row", infer_schema_length=None)


def test_per_user_rows_average_to_the_results_and_pair_as_numpy_does(built):
    _, result, connection = built
    users = table(connection, "staging.stg_eval_user_metrics")
    metadata = result.asset_materializations_for_node("evaluation__eval_results")[0].metadata
    assert metadata["n_user_metric_rows"].value == users.height
    assert metadata["n_test_users"].value == users.filter(pl.col("split") == "test")["user_id"].n_unique()
    # every eval_results row is the mean of its per-user rows (all of them, or its bucket's)
    results = table(connection, "marts.eval_results")
    keys = ["run_id", "split", "protocol", "setting", "method", "tag_source", "seed"]
    by_bucket = pl.concat([users, users.with_columns(pl.lit("all").alias("bucket"))])
    means = by_bucket.group_by([*keys, "bucket"]).agg(
        pl.col("hit_at_10").mean().alias("H@10"), pl.col("ndcg_at_10").mean().alias("N@10"), pl.len().alias("count")
    )
    means = means.unpivot(["H@10", "N@10"], index=[*keys, "bucket", "count"], variable_name="metric", value_name="mean")
    joined = results.join(means, on=[*keys, "bucket", "metric"], how="left")
    assert joined["mean"].null_count() == 0 and results.height == means.height
    assert np.allclose(joined["value"], joined["mean"]) and (joined["n_users"] == joined["count"]).all()
    # the paired differences, recomputed with numpy from the same per-user rows
    paired = table(connection, "marts.eval_paired_differences")
    expected = 0
    for comparison in registered_paired_comparisons():
        a = by_bucket.filter(pl.col("tag_source") == comparison.a).drop("tag_source")
        b = by_bucket.filter(pl.col("tag_source") == comparison.b).drop("tag_source")
        both = a.join(b, on=[*(k for k in keys if k != "tag_source"), "bucket", "user_id"], suffix="_b")
        for group, rows in both.group_by([*(k for k in keys if k != "tag_source"), "bucket"]):
            run_id, split, protocol, setting, method, seed, bucket = group
            for metric, column in (("H@10", "hit_at_10"), ("N@10", "ndcg_at_10")):
                d = rows[column].to_numpy() - rows[f"{column}_b"].to_numpy()
                row = paired.filter(
                    (pl.col("run_id") == run_id) & (pl.col("split") == split) & (pl.col("protocol") == protocol)
                    & (pl.col("setting") == setting) & (pl.col("method") == method) & (pl.col("seed") == seed)
                    & (pl.col("bucket") == bucket) & (pl.col("metric") == metric)
                    & (pl.col("tag_source_a") == comparison.a) & (pl.col("tag_source_b") == comparison.b)
                )  # fmt: skip
                assert row.height == 1
                assert row["mean_difference"][0] == pytest.approx(d.mean())
                if d.size > 1:
                    assert row["std_error"][0] == pytest.approx(d.std(ddof=1) / np.sqrt(d.size))
                assert (row["n_users"][0], row["n_a_better"][0], row["n_b_better"][0]) == (
                    d.size, int((d > 0).sum()), int((d < 0).sum())
                )
                expected += 1
    assert expected == paired.height > 0
    assert {"unisrec", "bm25", "birank"} <= set(paired["method"])
