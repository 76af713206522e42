"""The registries of tag sources, retrieval methods and recommenders: each concept is written
once, SQL and Python read the same list, and a new entry is one module plus one line.

The end-to-end tests build a real warehouse: the synthetic dataset landed, LLM shards written
as the LLM assets would (seeded fake tags, no model), ``dbt build`` of a copy of the project,
then the evaluation library over it.
"""

from __future__ import annotations

import gc
import json
import random
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import yaml

from dagster_betag import settings
from dagster_betag.datasets import read_dataset, write_landing
from dagster_betag.evaluation import retrieval_methods
from dagster_betag.evaluation.recommenders import RECOMMENDERS
from dagster_betag.evaluation.report import poster_tables, results_frame
from dagster_betag.evaluation.retrieval_methods import ChunkScores, RetrievalMethod, tag_method_names
from dagster_betag.evaluation.runner import EvaluationConfig, evaluate_warehouse
from dagster_betag.evaluation.tag_sources import TAG_SOURCES_VAR, llm_tag_source_names, read_tag_sources, tag_source_names
from dagster_betag.llm.betag import aggregate_beams
from dagster_betag.llm.variants import VARIANTS
from tests.synthetic import write_synthetic_movielens

FAKE_TAGS = (
    "space opera", "robots", "romance", "paris", "heist", "time travel", "western", "dark comedy",
    "aliens", "coming of age", "road trip", "noir", "musical", "zombies", "courtroom",
)  # fmt: skip
GENERATED_AT = "2026-01-01T00:00:00"
# retrieval only, one split and protocol: the registries are under test, not the models
QUICK_EVALUATION = EvaluationConfig(splits=("test",), protocols=("full",), recommenders=(), beam_counts=(1,))

# a SQL-only tag source: each item's title words, one dbt model
TITLE_WORDS_MODEL = """
with

items as (

    select * from {{ ref('dim_items') }}

),

final as (

    select
        item_id,
        string_split(regexp_replace(lower(title), '[^a-z ]', '', 'g'), ' ') as tags
    from items

)

select * from final
"""
TITLE_WORDS_SOURCE = {
    "name": "title_words", "model": "item_tag_lists_title_words", "llm_made": False, "description": "title words",
}  # fmt: skip


def write_fake_llm_shards(landing: Path, item_ids: list[str]) -> None:
    """The shards of base tags, BETags of every variant and the tag vocabulary, as the LLM
    assets write them, with seeded fake tags (beam 0 of each generation is the base tags)."""
    base, betags = [], []
    for item_id in item_ids:
        rng = random.Random(f"base {item_id}")
        base_tags = rng.sample(FAKE_TAGS, 4)
        base.append({"item_id": item_id, "tags": base_tags})
        for variant in VARIANTS:
            rng = random.Random(f"{variant.name} {item_id}")
            beams = [rng.sample(FAKE_TAGS, 3) for _ in range(3 if variant.multi_beam else 1)]
            tags = aggregate_beams([base_tags, *beams], top_k=5)
            betags.append({
                "item_id": item_id, "variant": variant.name, "beam_texts": [", ".join(b) for b in beams],
                "beam_tags": [base_tags, *beams], "tags": [{"tag": t.tag, "n_beams": t.n_beams, "score": t.score} for t in tags],
                "adapter_id": "adapter" if variant.finetuned else "none",
            })  # fmt: skip
    common = {"generated_at": GENERATED_AT, "model": "fake", "precision": "float32", "prompt_version": "v1",
              "input_hash": "h", "item_shard": "all"}  # fmt: skip
    base_frame = pl.DataFrame(base).with_columns(
        **{name: pl.lit(value) for name, value in common.items()},
        model_fingerprint=pl.lit("f"), generation=pl.lit("g"),
    )  # fmt: skip
    betag_frame = pl.DataFrame(
        betags,
        schema_overrides={"tags": pl.List(pl.Struct({"tag": pl.Utf8, "n_beams": pl.Int64, "score": pl.Float64}))},
    ).with_columns(**{name: pl.lit(value) for name, value in common.items()}, decoding=pl.lit("d"))
    for table, frame in (("base_tags", base_frame), ("betags", betag_frame)):
        folder = landing / table / "item_shard=all"
        folder.mkdir(parents=True)
        frame.write_parquet(folder / "shard-0.parquet")
    # every raw tag kept as written, one merged into another
    vocabulary = pl.DataFrame({
        "raw_tag": list(FAKE_TAGS), "canonical_tag": ["robot" if t == "robots" else t for t in FAKE_TAGS],
        "reason": ["semantic" if t == "robots" else "kept" for t in FAKE_TAGS],
        "similarity": [1.0] * len(FAKE_TAGS), "n_items": [1] * len(FAKE_TAGS), "config_id": ["c"] * len(FAKE_TAGS),
    })  # fmt: skip
    (landing / "tag_vocabulary").mkdir()
    vocabulary.write_parquet(landing / "tag_vocabulary" / "tag_vocabulary.parquet")


def dbt_build(project_dir: Path, warehouse: Path, root: Path, dbt_vars: dict | None = None) -> None:
    """``dbt build`` of ``project_dir`` into ``warehouse``, in this process, evaluation outputs
    left out; ``dbt_vars`` override the project's vars."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    from dbt.cli.main import dbtRunner

    args = [
        "build", "--exclude", "tag:evaluation_outputs", "resource_type:unit_test",
        "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
        "--target-path", str(root / "dbt-target"), "--log-path", str(root / "dbt-logs"),
        "--log-level", "none", "--log-level-file", "info",
        *(("--vars", json.dumps(dbt_vars)) if dbt_vars else ()),
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
        result = dbtRunner().invoke(args)
    DuckDBConnectionManager.close_all_connections()  # dbt-duckdb keeps its connection otherwise
    gc.collect()
    if result.exception is not None:
        raise result.exception
    failed = [r.node.name for r in result.result.results if str(r.status) in ("error", "fail")]
    assert result.success, f"dbt build failed: {failed}; see {root / 'dbt-logs'}"


def copy_project(destination: Path) -> Path:
    shutil.copytree(settings.DBT_PROJECT_DIR, destination, ignore=shutil.ignore_patterns("target", "logs", ".user.yml"))
    return destination


def add_tag_source(project_dir: Path, model_name: str, model_sql: str, entry: dict) -> None:
    """The two steps a new SQL-only tag source takes: its model, and its line in the registry."""
    (project_dir / "models" / "marts" / "tags" / "sources" / f"{model_name}.sql").write_text(model_sql)
    project_file = project_dir / "dbt_project.yml"
    text = project_file.read_text()
    last = yaml.safe_load(text)["vars"][TAG_SOURCES_VAR][-1]
    anchor = f"      description: {last['description']}\n"
    assert anchor in text, "the registry's last entry is not where this test adds a line"
    project_file.write_text(text.replace(anchor, f"{anchor}    - {json.dumps(entry)}\n"))  # JSON is YAML


@dataclass(frozen=True)
class BuiltWarehouse:
    project_dir: Path
    database: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> BuiltWarehouse:
    """A warehouse built by a copy of the project that has one more tag source, title_words."""
    root = tmp_path_factory.mktemp("registries")
    project_dir = copy_project(root / "dbt_project")
    add_tag_source(project_dir, TITLE_WORDS_SOURCE["model"], TITLE_WORDS_MODEL, TITLE_WORDS_SOURCE)
    warehouse = root / "warehouse"
    synthetic = write_synthetic_movielens(root / "dataset")
    write_landing(read_dataset(synthetic.folder), warehouse / "landing")
    write_fake_llm_shards(warehouse / "landing", sorted({event.item_id for event in synthetic.valid_events}))
    dbt_build(project_dir, warehouse, root)
    return BuiltWarehouse(project_dir, warehouse / "betag.duckdb")


@pytest.fixture
def registry_of(built, monkeypatch) -> BuiltWarehouse:
    """Python reads the tag sources of the built copy of the project."""
    monkeypatch.setattr(settings, "DBT_PROJECT_DIR", built.project_dir)
    return built


def test_a_new_sql_tag_source_is_one_model_and_one_registry_line(registry_of):
    assert tag_source_names()[-1] == "title_words" and "title_words" not in llm_tag_source_names()
    with duckdb.connect(str(registry_of.database), read_only=True) as connection:
        documents = dict(connection.execute(
            "select tag_source, count(*) filter (where n_tags > 0) from marts.item_tag_documents group by 1"
        ).fetchall())  # fmt: skip
        n_kcore = connection.execute("select count(*) from marts.dim_items where is_in_kcore").fetchone()[0]
    assert set(documents) == set(tag_source_names()) and documents["title_words"] == n_kcore
    evaluation = evaluate_warehouse(registry_of.database, QUICK_EVALUATION, lambda line: None)
    assert evaluation.sources == list(tag_source_names())
    title_rows = [row for row in evaluation.rows if row.tag_source == "title_words" and row.bucket == "all"]
    assert {(row.method, row.setting, row.metric) for row in title_rows} == {
        (method, setting, metric) for method in tag_method_names() for setting in ("user", "item") for metric in ("H@10", "N@10")
    }  # fmt: skip
    frame = results_frame(evaluation, QUICK_EVALUATION, run_id="r", dataset="synthetic", created_at=GENERATED_AT)
    assert "| title_words |" in poster_tables(frame)


def test_with_a_tag_file_the_native_source_is_its_tags_not_the_genres(built):
    """ml-latest layout: tags.csv landed, so native_tags_from_attribute (auto) leaves the genres out
    (tests/test_native_tags.py builds the ml-1m layout, where the genres stand in)."""
    with duckdb.connect(str(built.database), read_only=True) as connection:
        documents = dict(connection.execute(
            "select item_id, tags from marts.item_tag_documents where tag_source = 'native' and n_tags > 0"
        ).fetchall())  # fmt: skip
        origins = connection.execute("select distinct origin from marts.fct_item_native_tags").fetchall()
    # the synthetic tags.csv: "Pixar" and "pixar." on item 1, "time travel" on item 4
    assert documents == {"1": ["pixar"], "4": ["time travel"]} and origins == [("tag_file",)]


def test_a_new_retrieval_method_is_one_scorer_and_one_registry_line(registry_of, monkeypatch):
    """A trivial scorer, registered in the fixture, is run on every tag source and reported."""
    calls = []

    class EveryItemEqual:
        def __init__(self, documents, config) -> None:
            self.n_items = documents.shape[0]

        def score(self, query_counts) -> ChunkScores:
            calls.append(query_counts.shape)
            return ChunkScores(np.zeros((query_counts.shape[0], self.n_items)))

    monkeypatch.setitem(
        retrieval_methods.RETRIEVAL_METHODS, "equal", RetrievalMethod("equal", "Equal", uses_tags=True, build=EveryItemEqual)
    )
    config = replace(QUICK_EVALUATION, retrieval_methods=tag_method_names())
    assert "equal" in config.retrieval_methods
    evaluation = evaluate_warehouse(registry_of.database, config, lambda line: None)
    equal = {(row.tag_source, row.setting) for row in evaluation.rows if row.method == "equal" and row.bucket == "all"}
    assert {source for source, _ in equal} >= set(tag_source_names()) and calls
    # equal scores leave the ranking to the popularity tie rule: exactly Popular's
    value = {(row.method, row.tag_source, row.setting, row.metric): row.value for row in evaluation.rows if row.bucket == "all"}
    assert value["equal", "native", "user", "N@10"] == value["popular", "none", "user", "N@10"]
    frame = results_frame(evaluation, config, run_id="r", dataset="synthetic", created_at=GENERATED_AT)
    assert "Equal user N@10" in poster_tables(frame)


def test_sql_python_and_variant_registries_agree(tmp_path):
    """The tag sources dbt builds (compiled from the var) are Python's, and the BETag variant
    sources are llm/variants.py's, in its order."""
    project = yaml.safe_load((settings.DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    names = [entry["name"] for entry in project["vars"][TAG_SOURCES_VAR]]
    assert list(tag_source_names()) == names and len(set(names)) == len(names)
    variant_sources = [s for s in read_tag_sources(settings.DBT_PROJECT_DIR) if s.betag_variant is not None]
    assert [(s.name, s.betag_variant) for s in variant_sources] == [(v.tag_source, v.name) for v in VARIANTS]
    assert all(s.llm_made for s in variant_sources)
    assert [s.name for s in read_tag_sources(settings.DBT_PROJECT_DIR) if not s.llm_made] == ["native", "propagated"]
    # what SQL makes of the var: the compiled model and its accepted_values test
    compiled = compile_tag_documents(tmp_path)
    assert compiled.model_sources == names and compiled.accepted_values == names
    assert set(compiled.models) == {s.model for s in read_tag_sources(settings.DBT_PROJECT_DIR)}
    assert set(RECOMMENDERS) == set(EvaluationConfig().recommenders)
    assert EvaluationConfig().retrieval_methods == tag_method_names()


@dataclass(frozen=True)
class CompiledDocuments:
    model_sources: list[str]  # the tag_source literals of item_tag_documents' source_names, in order
    accepted_values: list[str]
    models: list[str]  # the models item_tag_documents depends on, besides dim_items


def compile_tag_documents(root: Path) -> CompiledDocuments:
    """``dbt compile`` of item_tag_documents and its tests: the source names in the model's
    VALUES list, those of its accepted_values test, and the models it reads."""
    from dbt.cli.main import dbtRunner

    project = str(settings.DBT_PROJECT_DIR)
    args = [
        "compile", "--select", "item_tag_documents", "--project-dir", project, "--profiles-dir", project,
        "--target-path", str(root / "target"), "--log-path", str(root / "logs"), "--log-level", "none",
    ]  # fmt: skip
    (root / "warehouse").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(settings.WAREHOUSE_ENV, str(root / "warehouse"))
        result = dbtRunner().invoke(args)
    assert result.success, result.exception
    nodes = [r.node for r in result.result.results]
    (model,) = [node for node in nodes if node.resource_type == "model"]
    (test,) = [node for node in nodes if node.resource_type == "test" and node.test_metadata.name == "accepted_values"]
    values_list = model.compiled_code.split("source_names as (")[1].split("final as (")[0]
    accepted = test.compiled_code.split("not in (")[1].split(")")[0]
    return CompiledDocuments(
        model_sources=re.findall(r"\('([^']+)'\)", values_list),
        accepted_values=re.findall(r"'([^']+)'", accepted),
        models=[node.split(".")[-1] for node in model.depends_on.nodes if node != "model.betag.dim_items"],
    )
