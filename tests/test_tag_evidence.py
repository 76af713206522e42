"""Tag explanations on a catalog whose evidence is known by construction: marts.item_tag_evidence,
`betag tags ITEM --explain`, and the popular items' evidence on the mart's materialization.

Six films, seven users who rate all of them, each in a fixed order, so the train successors
of Alpha (item 1) are Beta three times, Gamma twice and Delta once. The LLM shards are written
as the LLM assets would. Delta's base tag "comedies" is "comedy" through the tag vocabulary,
so it counts for Alpha's BETag "comedy"; "space" has no successor behind it: Epsilon holds it
but follows Alpha only from validation to test, and Gamma held it in a superseded generation
only. The warehouse is a real ``dbt build`` of the project.
"""

from __future__ import annotations

import csv
import shlex
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import DagsterInstance

from dagster_betag import settings
from dagster_betag.cli import main
from dagster_betag.datasets import read_dataset, write_landing
from dagster_betag.defs import keys
from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.llm.betag import aggregate_beams
from tests.synthetic import EPOCH_START
from tests.test_registries import dbt_build

TITLES = {"1": "Alpha", "2": "Beta", "3": "Gamma", "4": "Delta", "5": "Epsilon", "6": "Zeta"}
# each user's ratings in time order; leave-one-out keeps the last two for validation and test
RATING_ORDERS = {
    **dict.fromkeys(("1", "2", "3"), ["1", "2", "3", "4", "5", "6"]),
    **dict.fromkeys(("4", "5"), ["1", "3", "2", "4", "5", "6"]),
    "6": ["1", "4", "2", "3", "5", "6"],
    "7": ["2", "3", "4", "6", "1", "5"],  # 1 -> 5 runs from validation to test
}
CURRENT_BASE_TAGS = {
    "1": ["comedy", "heist"], "2": ["comedy", "drama"], "3": ["drama"], "4": ["comedies"], "5": ["space"],
    "6": ["war"],
}  # fmt: skip
SUPERSEDED_BASE_TAGS = {"3": ["space", "drama"]}
CANONICAL = {"comedies": "comedy"}
# the beams the finetuned model wrote, after the base-tag beam
GENERATED_BEAMS = {
    "1": [["drama", "comedy"], ["drama", "space"], ["comedy", "war"]],
    "2": [["heist"], ["war", "heist"]],
}

# Alpha's BETags in rank order: tag, in base tags, generated beams with it, generated beams,
# train successors with it, train successors, their transitions, all transitions, top successors
ALPHA_EVIDENCE = [
    ("comedy", True, 2, 3, 2, 3, 4, 6, [("2", "Beta", 3), ("4", "Delta", 1)]),
    ("drama", False, 2, 3, 2, 3, 5, 6, [("2", "Beta", 3), ("3", "Gamma", 2)]),
    ("heist", True, 0, 3, 0, 3, 0, 6, []),
    ("space", False, 1, 3, 0, 3, 0, 6, []),
    ("war", False, 1, 3, 0, 3, 0, 6, []),
]


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with (folder / "movies.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows((item_id, f"{title} (2001)", "Drama") for item_id, title in TITLES.items())
    with (folder / "ratings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for user_id, order in RATING_ORDERS.items():
            start = EPOCH_START + int(user_id) * 86_400
            writer.writerows((user_id, item_id, "4.0", start + 60 * step) for step, item_id in enumerate(order))
    return folder


def write_llm_shards(landing: Path) -> None:
    """Base tags (with a superseded generation), the tag vocabulary, and BETags whose beam 0 is
    the item's canonical base tags, aggregated as the BETag asset does."""
    common = {"model": "fake", "precision": "float32", "prompt_version": "v1", "input_hash": "h", "item_shard": "all"}
    generations = {"2026-01-01T00:00:00": SUPERSEDED_BASE_TAGS, "2026-01-02T00:00:00": CURRENT_BASE_TAGS}
    base = [
        {"item_id": item_id, "tags": tags, "generated_at": generated_at}
        for generated_at, generation in generations.items()
        for item_id, tags in generation.items()
    ]
    betags = []
    for item_id, generated in GENERATED_BEAMS.items():
        beams = [[CANONICAL.get(tag, tag) for tag in CURRENT_BASE_TAGS[item_id]], *generated]
        betags.append({
            "item_id": item_id, "variant": "betag", "beam_texts": [", ".join(beam) for beam in generated],
            "beam_tags": beams, "adapter_id": "adapter", "generated_at": "2026-01-03T00:00:00",
            "tags": [{"tag": t.tag, "n_beams": t.n_beams, "score": t.score} for t in aggregate_beams(beams, top_k=10)],
        })  # fmt: skip
    frames = {
        "base_tags": pl.DataFrame(base).with_columns(
            **{name: pl.lit(value) for name, value in common.items()},
            model_fingerprint=pl.lit("f"),
            generation=pl.lit("g"),
        ),
        "betags": pl.DataFrame(betags).with_columns(
            **{name: pl.lit(value) for name, value in common.items()}, decoding=pl.lit("d")
        ),
    }
    for table, frame in frames.items():
        folder = landing / table / "item_shard=all"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "shard-0.parquet")
    raw_tags = sorted({tag for generation in generations.values() for tags in generation.values() for tag in tags})
    (landing / "tag_vocabulary").mkdir()
    pl.DataFrame({
        "raw_tag": raw_tags, "canonical_tag": [CANONICAL.get(tag, tag) for tag in raw_tags],
        "reason": ["spelling" if tag in CANONICAL else "kept" for tag in raw_tags],
        "similarity": [1.0] * len(raw_tags), "n_items": [1] * len(raw_tags), "config_id": ["c"] * len(raw_tags),
    }).write_parquet(landing / "tag_vocabulary" / "tag_vocabulary.parquet")  # fmt: skip


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evidence")
    folder = root / "warehouse"
    write_landing(read_dataset(write_dataset(root / "dataset")), folder / "landing")
    write_llm_shards(folder / "landing")
    dbt_build(settings.DBT_PROJECT_DIR, folder, root)
    return folder


def test_the_mart_names_the_beams_base_tags_and_successors_behind_each_betag(warehouse):
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        rows = connection.execute(
            "select tag, is_in_base_tags, n_generated_beams_with_tag, n_generated_beams, n_successors_with_tag, "
            "n_train_successors, n_transitions_with_tag, n_train_transitions, top_successors "
            "from marts.item_tag_evidence where item_id = '1' order by tag_rank"
        ).fetchall()
        n_items = connection.execute("select count(distinct item_id) from marts.item_tag_evidence").fetchone()[0]
    expected = [
        (*counts, [{"item_id": i, "title": title, "n_transitions": n} for i, title, n in top])
        for *counts, top in ALPHA_EVIDENCE
    ]
    assert rows == expected
    assert n_items == len(GENERATED_BEAMS)


def test_explain_prints_the_evidence_and_the_query_that_shows_it(warehouse, capsys, monkeypatch):
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse))  # the CLI points the environment at --warehouse
    assert main(["tags", "alpha", "--explain", "--warehouse", str(warehouse)]) == 0
    shown = capsys.readouterr().out
    table = [line for line in shown.splitlines() if line.startswith("| ")]
    assert table == [
        "| tag | generated beams | in base tags | train successors with it | their transitions "
        "| top successors (transitions) |",
        "| comedy | 2/3 | yes | 2 of 3 | 4 of 6 | Beta (3); Delta (1) |",
        "| drama | 2/3 | no | 2 of 3 | 5 of 6 | Beta (3); Gamma (2) |",
        "| heist | 0/3 | yes | 0 of 3 | 0 of 6 | - |",
        "| space | 1/3 | no | 0 of 3 | 0 of 6 | - |",
        "| war | 1/3 | no | 0 of 3 | 0 of 6 | - |",
    ]
    (check,) = [line for line in shown.splitlines() if line.startswith("check: ")]
    command = shlex.split(check.removeprefix("check: "))
    assert command[:2] == ["betag", "sql"] and "where item_id = '1'" in command[2]
    assert main([*command[1:], "--warehouse", str(warehouse)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[:8] for row in rows] == [
        ["| " + tag, *map(str, counts)] for tag, *counts, _ in ALPHA_EVIDENCE
    ]


def test_explain_of_an_item_without_betags_says_so(warehouse, capsys, monkeypatch):
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
    assert main(["tags", "3", "--explain", "--warehouse", str(warehouse)]) == 0
    shown = capsys.readouterr().out
    assert "BETags: - (none generated for this item yet)" in shown and "check:" not in shown


def test_explain_before_the_mart_is_built_fails_in_one_line(warehouse, tmp_path, capsys, monkeypatch):
    older = tmp_path / "older"
    older.mkdir()
    shutil.copy(warehouse / "betag.duckdb", older / "betag.duckdb")
    with duckdb.connect(str(older / "betag.duckdb")) as connection:
        connection.execute("drop table marts.item_tag_evidence")
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(older))
    assert main(["tags", "1", "--explain", "--warehouse", str(older)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("betag: error: no marts.item_tag_evidence") and error.count("\n") == 1


def test_the_marts_materialization_shows_the_popular_items_evidence(warehouse, defs, monkeypatch):
    monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
    mart = keys.model("marts", "item_tag_evidence")
    job = defs.resolve_job_def("betag_pipeline").get_subset(asset_selection={mart})
    result = job.execute_in_process(instance=DagsterInstance.ephemeral(), tags=every_item_shard())
    (materialization,) = [m for m in result.get_asset_materialization_events() if m.asset_key == mart]
    table = materialization.materialization.metadata["popular_items"].value.splitlines()
    # Beta is more popular than Alpha (7 train interactions to 6): its rows come first
    assert table[2:4] == [
        "| Beta | heist | 2/2 | no | 0 of 2 | 0 of 7 | - |",
        "| Beta | comedy | 0/2 | yes | 1 of 2 | 2 of 7 | Delta (2) |",
    ]
    assert "| Alpha | comedy | 2/3 | yes | 2 of 3 | 4 of 6 | Beta (3); Delta (1) |" in table
    assert len(table) == 2 + len(ALPHA_EVIDENCE) + 4  # header, Alpha's and Beta's BETags
