"""Native tags from an attribute: MovieLens 1M and 100k have no tag file, only genres, and the
native tag source then holds each item's genres (the native_tags_from_attribute var, auto).

A real ``dbt build`` over an ml-1m-layout dataset (the synthetic dataset's valid movies and
ratings written as movies.dat and ratings.dat), LLM shards faked as in test_registries.py.
The ml-latest layout, with a tag file, is checked there on its own build.
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb
import pytest

from dagster_betag.datasets import read_dataset, write_landing
from tests.synthetic import write_synthetic_movielens
from tests.test_registries import copy_project, dbt_build, write_fake_llm_shards


def write_ml1m_from_synthetic(synthetic_dir: Path, folder: Path) -> dict[str, list[str]]:
    """The synthetic dataset's first row of each titled movie and its valid ratings, in the ml-1m
    layout (latin-1, ``::``-separated, no header, no tags); returns each movie's genres."""
    genres: dict[str, list[str]] = {}
    movies = []
    with (synthetic_dir / "movies.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["title"] and row["movieId"] not in genres:
                genres[row["movieId"]] = row["genres"].split("|")
                movies.append(f"{row['movieId']}::{row['title']}::{row['genres']}\n")
    folder.mkdir(parents=True)
    (folder / "movies.dat").write_bytes("".join(movies).encode("latin-1"))
    return genres


@pytest.fixture(scope="module")
def ml1m_warehouse(tmp_path_factory) -> tuple[duckdb.DuckDBPyConnection, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("native-attr")
    synthetic = write_synthetic_movielens(root / "synthetic")
    folder = root / "ml-1m"
    genres = write_ml1m_from_synthetic(synthetic.folder, folder)
    ratings = "".join(f"{e.user_id}::{e.item_id}::4::{e.timestamp}\n" for e in synthetic.valid_events)
    (folder / "ratings.dat").write_text(ratings, encoding="latin-1")
    dataset = read_dataset(folder)
    assert dataset.format == "movielens-1m" and dataset.native_tags.is_empty()
    warehouse = root / "warehouse"
    write_landing(dataset, warehouse / "landing")
    write_fake_llm_shards(warehouse / "landing", sorted(genres))
    dbt_build(copy_project(root / "dbt_project"), warehouse, root)
    connection = duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True)
    yield connection, genres
    connection.close()


def test_ml1m_native_documents_are_the_genres(ml1m_warehouse) -> None:
    connection, genres = ml1m_warehouse
    documents = dict(
        connection.execute("select item_id, tags from marts.item_tag_documents where tag_source = 'native'").fetchall()
    )
    assert documents, "no k-core item"
    # normalized as tag-file tags are (lower case), listed alphabetically (one tagging each)
    assert documents == {item_id: sorted(g.lower() for g in genres[item_id]) for item_id in documents}
    origins = connection.execute(
        "select origin, min(n_taggings), max(n_taggings), max(n_users), count(first_tagged_at) "
        "from marts.fct_item_native_tags group by origin"
    ).fetchall()
    assert origins == [("attribute:genre", 1, 1, 0, 0)]
