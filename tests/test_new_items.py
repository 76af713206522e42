"""The new-item protocol on a hand-made catalog built by a real ``dbt build``: a stable share
of the k-core items is new, nothing learns from their interactions (behavior sessions,
finetuning windows, transitions, learnable popularity, recommender training), and the
evaluation scores them in the bucket ``new``. ``new_item_share: 0`` gives the tables of old.

Forty films and fifteen users, each rating 30 of them in a seeded order; the md5 rule makes
7 of the 40 new at the default share of 0.2 (items 6, 19, 24, 27, 33, 35 and 36).
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from dagster_betag import settings
from dagster_betag.datasets import read_dataset, write_landing
from dagster_betag.evaluation.als import interaction_matrix
from dagster_betag.evaluation.data import load_eval_data
from dagster_betag.evaluation.runner import BUCKETS, NEW_ITEMS, evaluate_warehouse, popularity_buckets
from dagster_betag.evaluation.sasrec import training_windows
from dagster_betag.llm.finetune import WindowConfig, build_windows
from dagster_betag.warehouse import behavior_sessions
from tests.synthetic import EPOCH_START, reference_new_items
from tests.test_registries import QUICK_EVALUATION, dbt_build, write_fake_llm_shards

N_ITEMS, N_USERS, RATINGS_PER_USER = 40, 15, 30
SHARE = 0.2


def write_catalog(folder: Path) -> Path:
    """movies.csv and ratings.csv; a user's ratings are a minute apart, with an hour's gap
    after every seventh, so there are several sessions per user."""
    rng = random.Random(3)
    folder.mkdir(parents=True)
    with (folder / "movies.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows((i, f"Film {i} (2001)", "Drama") for i in range(1, N_ITEMS + 1))
    with (folder / "ratings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for user in range(1, N_USERS + 1):
            start = EPOCH_START + user * 86_400
            for step, item in enumerate(rng.sample(range(1, N_ITEMS + 1), RATINGS_PER_USER)):
                writer.writerow((user, item, "4.0", start + 60 * step + 3_600 * (step // 7)))
    return folder


def build(root: Path, dbt_vars: dict | None = None) -> Path:
    folder = root / "warehouse"
    write_landing(read_dataset(write_catalog(root / "dataset")), folder / "landing")
    write_fake_llm_shards(folder / "landing", [str(i) for i in range(1, N_ITEMS + 1)])
    dbt_build(settings.DBT_PROJECT_DIR, folder, root, dbt_vars)
    return folder / "betag.duckdb"


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("new-items"))


def rows(database: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def new_items(database: Path) -> set[str]:
    return {item_id for (item_id,) in rows(database, "select item_id from marts.dim_items where is_new_item")}


def learned_items(database: Path) -> dict[str, set[str]]:
    """What the pipeline learns from, item ids per table."""
    transitions = rows(database, "select item_id, next_item_id from intermediate.int_item_transitions_counted")
    return {
        "sessions": {i for (items,) in rows(database, "select item_ids from marts.fct_behavior_sessions") for i in items},
        "transitions": {i for pair in transitions for i in pair},
        "learnable popularity": {
            i for (i,) in rows(database, "select item_id from marts.fct_item_popularity where n_learnable_train_interactions > 0")
        },
    }


def sequence_items(database: Path) -> set[str]:
    return {
        item
        for train, validation, test in rows(
            database, "select train_item_ids, validation_item_id, test_item_id from marts.fct_user_sequences"
        )
        for item in (*train, validation, test)
    }


def test_the_share_of_new_items_is_the_md5_rule_on_the_kcore(database):
    kcore = {i for (i,) in rows(database, "select item_id from marts.dim_items where is_in_kcore")}
    chosen = new_items(database)
    assert chosen == reference_new_items(kcore, SHARE)
    assert len(kcore) == N_ITEMS and abs(len(chosen) / len(kcore) - SHARE) <= 0.05  # 7 of 40


def test_new_items_are_in_the_sequences_but_in_nothing_learned(database):
    chosen = new_items(database)
    assert chosen and chosen <= sequence_items(database)
    for table, items in learned_items(database).items():
        assert items and not items & chosen, table
    # the users' train interactions with new items are there, only not learnable
    counts = rows(
        database,
        "select bool_and(p.n_learnable_train_interactions = 0), sum(p.n_train_interactions) "
        "from marts.fct_item_popularity p join marts.dim_items i using (item_id) where i.is_new_item",
    )
    assert counts[0][0] and counts[0][1] > 0


def test_finetuning_windows_never_contain_a_new_item(database):
    chosen = new_items(database)
    everything = {str(i) for i in range(1, N_ITEMS + 1)}
    windows = build_windows(behavior_sessions(database), everything, WindowConfig(max_examples=None))
    seen = {i for window in windows for i in (*window.context_item_ids, window.target_item_id, *window.later_item_ids)}
    assert windows and not seen & chosen


def test_the_count_based_reference_of_a_new_item_is_its_own_base_tags(database):
    own = dict(rows(database, "select item_id, list(tag order by tag) from marts.item_base_tags group by item_id"))
    propagated = rows(
        database,
        "select item_id, list(tag order by tag), max(n_source_items) from marts.item_propagated_tags "
        "join marts.dim_items using (item_id) where is_new_item group by item_id",
    )
    assert {item_id for item_id, _, _ in propagated} == new_items(database)
    assert all(tags == own[item_id] and n_sources == 1 for item_id, tags, n_sources in propagated)


def test_recommenders_train_and_popularity_count_without_new_items(database):
    data = load_eval_data(database)
    is_new = data.is_new()
    assert set(np.array(data.item_ids)[is_new]) == new_items(database)
    assert (data.train_popularity()[is_new] == 0).all() and (data.train_popularity()[~is_new] > 0).all()
    inputs, targets, _ = training_windows(data, max_length=50, all_windows=True)  # item rows, 0 = padding
    new_rows = np.flatnonzero(is_new) + 1
    assert not np.isin(inputs, new_rows).any() and not np.isin(targets, new_rows).any()
    assert interaction_matrix(data, None)[:, is_new].nnz == 0
    # scoring still sees them: the test histories hold new items
    assert interaction_matrix(data, "test")[:, is_new].nnz > 0


def test_popularity_buckets_partition_the_non_new_items(database):
    data = load_eval_data(database)
    buckets = popularity_buckets(data, head_share=0.1, cold_share=0.5)
    n_learnable = int((~data.is_new()).sum())
    assert ((buckets == NEW_ITEMS) == data.is_new()).all()
    assert Counter(buckets) == {
        NEW_ITEMS: data.n_items - n_learnable,
        "head": round(0.1 * n_learnable),
        "cold": round(0.5 * n_learnable),
        "mid": n_learnable - round(0.1 * n_learnable) - round(0.5 * n_learnable),
    }


def test_the_evaluation_reports_users_whose_target_is_new(database):
    evaluation = evaluate_warehouse(database, QUICK_EVALUATION, lambda _: None)
    chosen = new_items(database)
    n_new_targets = sum(user.test in chosen for user in evaluation.data.users)
    new_rows = [row for row in evaluation.rows if row.bucket == NEW_ITEMS]
    assert n_new_targets > 0 and {row.bucket for row in evaluation.rows} == {"all", *BUCKETS}
    assert {row.n_users for row in new_rows} == {n_new_targets}
    assert {row.tag_source for row in new_rows} >= {"none", "propagated", "betag"}


def test_a_zero_share_gives_the_tables_without_the_protocol(tmp_path):
    database = build(tmp_path, {"new_item_share": 0})
    assert not new_items(database)
    assert rows(database, "select count(*) from marts.fct_item_popularity "
                          "where n_learnable_train_interactions <> n_train_interactions") == [(0,)]  # fmt: skip
    # sessions and transitions over the whole train sequences, as before the protocol
    train = [tuple(t) for (t,) in rows(database, "select train_item_ids from marts.fct_user_sequences")]
    consecutive = Counter((a, b) for items in train for a, b in zip(items, items[1:]) if a != b)
    transitions = rows(database, "select item_id, next_item_id, n_transitions from intermediate.int_item_transitions_counted")
    assert {(a, b): n for a, b, n in transitions} == consecutive
    session_items = rows(database, "select sum(n_items) from marts.fct_behavior_sessions")[0][0]
    single_sessions = rows(
        database,
        "select count(*) from (select session_id from intermediate.int_train_interactions_sessionized "
        "group by session_id having count(*) = 1)",
    )[0][0]
    assert session_items + single_sessions == sum(len(items) for items in train)
