"""What every evaluation method sees: the catalog, each user's leave-one-out sequence, and
the tag documents of one source. Plain data read from the warehouse marts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from dagster_betag.evaluation.tag_sources import in_display_order
from dagster_betag.warehouse import connect_readonly, fetch_rows, fetch_value

SPLITS = ("validation", "test")


class EvaluationInputError(ValueError):
    """The warehouse lacks what an evaluation needs (a one-line message for the user)."""


@dataclass(frozen=True)
class UserSequence:
    """One user's items in time order: ``train`` (all but the last two), then the
    validation target, then the test target."""

    user_id: str
    train: tuple[str, ...]
    validation: str
    test: str

    def history(self, split: str) -> tuple[str, ...]:
        """Items before the ``split`` target (the test history includes the validation item)."""
        if split == "validation":
            return self.train
        if split == "test":
            return (*self.train, self.validation)
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")

    def target(self, split: str) -> str:
        self.history(split)  # validates the split name
        return self.validation if split == "validation" else self.test


@dataclass(frozen=True)
class EvalData:
    """The catalog (``item_ids``, position = item index) and the users to evaluate.

    ``new_item_ids``: the catalog items the new-item protocol treats as new
    (``marts.dim_items.is_new_item``). They stay in the users' histories and targets, but
    nothing learns from them: see ``learnable_train``."""

    item_ids: tuple[str, ...]
    users: tuple[UserSequence, ...]
    new_item_ids: frozenset[str] = frozenset()
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {item_id: i for i, item_id in enumerate(self.item_ids)})

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def indices(self, item_ids: Collection[str]) -> np.ndarray:
        return np.fromiter((self.index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def is_new(self) -> np.ndarray:
        """(n_items,) bool: whether each item is new."""
        return np.array([item_id in self.new_item_ids for item_id in self.item_ids], dtype=bool)

    def learnable_train(self, user: UserSequence) -> tuple[str, ...]:
        """``user.train`` without the new items: what a method may learn from (recommender
        training sequences, popularity), while ``user.history`` keeps them for scoring."""
        return tuple(item for item in user.train if item not in self.new_item_ids)

    def train_popularity(self) -> np.ndarray:
        """(n_items,) number of learnable train interactions of each item (validation and test
        excluded; 0 for a new item), as marts.fct_item_popularity.n_learnable_train_interactions."""
        counts = Counter(item for user in self.users for item in self.learnable_train(user))
        return np.array([counts.get(item_id, 0) for item_id in self.item_ids], dtype=np.float64)

    def restrict_to(self, item_ids: Collection[str]) -> EvalData:
        """The evaluation over a sub-catalog (e.g. the items a quick run tagged): each user's
        train items outside it are dropped; users whose validation or test target lies outside,
        or who keep no train item, are dropped."""
        keep = set(item_ids)
        catalog = tuple(i for i in self.item_ids if i in keep)
        users = []
        for user in self.users:
            train = tuple(i for i in user.train if i in keep)
            if train and user.validation in keep and user.test in keep:
                users.append(UserSequence(user.user_id, train, user.validation, user.test))
        return EvalData(catalog, tuple(users), self.new_item_ids & keep)


@dataclass(frozen=True)
class ItemBeams:
    """One item's BETag beams: the base-tag beam (when the generation counted it) and the
    decoded beams' tags, group-major."""

    base: tuple[tuple[str, ...], ...]
    generated: tuple[tuple[str, ...], ...]


def load_eval_data(database_path: Path) -> EvalData:
    """The k-core catalog (new items flagged) and every user's leave-one-out sequence from the marts."""
    with connect_readonly(database_path) as connection:
        _, items = fetch_rows(
            connection, "select item_id, is_new_item from marts.dim_items where is_in_kcore order by item_id"
        )
        _, rows = fetch_rows(
            connection,
            "select user_id, train_item_ids, validation_item_id, test_item_id from marts.fct_user_sequences "
            "where validation_item_id is not null and test_item_id is not null order by user_id",
        )
    users = tuple(UserSequence(user_id, tuple(train), validation, test) for user_id, train, validation, test in rows)
    new_item_ids = frozenset(item_id for item_id, is_new_item in items if is_new_item)
    return EvalData(tuple(item_id for item_id, _ in items), users, new_item_ids)


def load_tag_documents(database_path: Path, tag_source: str) -> dict[str, list[str]]:
    """item_id -> its tags of ``tag_source`` in rank order (empty list for an item without tags)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection,
            f"select item_id, tags from marts.item_tag_documents where tag_source = '{tag_source}'",
        )
    if not rows:
        raise EvaluationInputError(f"no tag documents for source {tag_source!r} in {database_path}")
    return {item_id: list(tags) for item_id, tags in rows}


def load_tag_sources(database_path: Path) -> list[str]:
    """The tag sources with at least one non-empty document, in the registry's order."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection, "select tag_source from marts.item_tag_documents group by tag_source having max(n_tags) > 0"
        )
    return in_display_order(source for (source,) in rows)


def load_betag_beams(database_path: Path) -> dict[str, ItemBeams]:
    """item -> the beams of its current BETag generation (marts.item_betag_beams)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection,
            "select item_id, list(tags order by beam_index) filter (where is_base_tags), "
            "list(tags order by beam_index) filter (where not is_base_tags) "
            "from marts.item_betag_beams group by item_id",
        )
    return {
        item_id: ItemBeams(tuple(tuple(t) for t in base or ()), tuple(tuple(t) for t in generated or ()))
        for item_id, base, generated in rows
    }


def load_tag_popularity(database_path: Path) -> dict[str, list[int]]:
    """tag source -> items per tag, for each of its tags (marts.tag_vocabulary)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(connection, "select tag_source, list(n_items) from marts.tag_vocabulary group by tag_source")
    counts = dict(rows)
    return {source: counts[source] for source in in_display_order(counts)}


EVAL_RESULTS_EXIST = (
    "select count(*) from information_schema.tables where table_schema = 'marts' and table_name = 'eval_results'"
)


def load_results(database_path: Path, run_id: str | None = None) -> pl.DataFrame:
    """The rows of one evaluation run from marts.eval_results (default: the latest run)."""
    latest = "(select run_id from marts.eval_results order by created_at desc, run_id limit 1)"
    run = latest if run_id is None else "'" + run_id.replace("'", "''") + "'"
    with connect_readonly(database_path) as connection:
        if not fetch_value(connection, EVAL_RESULTS_EXIST):
            raise EvaluationInputError(f"no evaluation in {database_path} yet: materialize evaluation/eval_results")
        columns, rows = fetch_rows(connection, f"select * from marts.eval_results where run_id = {run}")
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    if frame.is_empty():
        raise EvaluationInputError(f"no evaluation results{'' if run_id is None else f' for run {run_id}'} in {database_path}")
    return frame
