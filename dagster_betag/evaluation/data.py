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
    validation target, then the test target. In a sub-catalog (``EvalData.restrict_to``) a
    target outside it is None: that split does not evaluate the user, and the test history
    then lacks the validation item."""

    user_id: str
    train: tuple[str, ...]
    validation: str | None
    test: str | None

    def history(self, split: str) -> tuple[str, ...]:
        """Items before the ``split`` target (the test history includes the validation item)."""
        if split == "validation":
            return self.train
        if split == "test":
            return self.train if self.validation is None else (*self.train, self.validation)
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")

    def target(self, split: str) -> str | None:
        self.history(split)  # validates the split name
        return self.validation if split == "validation" else self.test

    def is_evaluated_on(self, split: str) -> bool:
        """Has the user a ``split`` target and something before it to query with?"""
        return self.target(split) is not None and bool(self.history(split))


@dataclass(frozen=True)
class EvalData:
    """The catalog (``item_ids``, position = item index) and its users: ``users`` are every
    user with an item in the catalog (the recommenders train on their learnable train
    sequences, train popularity counts them), ``split_users(split)`` those a split ranks.

    ``new_item_ids``: the catalog items the new-item protocol treats as new
    (``marts.dim_items.is_new_item``). They stay in the users' histories and targets, but
    nothing learns from them: see ``learnable_train``."""

    item_ids: tuple[str, ...]
    users: tuple[UserSequence, ...]
    new_item_ids: frozenset[str] = frozenset()
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    evaluated: dict[str, tuple[UserSequence, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {item_id: i for i, item_id in enumerate(self.item_ids)})
        evaluated = {split: tuple(u for u in self.users if u.is_evaluated_on(split)) for split in SPLITS}
        object.__setattr__(self, "evaluated", evaluated)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def split_users(self, split: str) -> tuple[UserSequence, ...]:
        """The users ``split`` ranks (in ``users`` order): those with a target of that split in
        the catalog and a non-empty history before it."""
        if split not in self.evaluated:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self.evaluated[split]

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
        """The evaluation over a sub-catalog (e.g. the items a quick run tagged), per split:
        every item outside it is dropped from every sequence (train items and targets alike),
        and a split evaluates every user whose target of *that* split lies inside, with the
        history before it that lies inside (the test history keeps the validation item only
        when it lies inside). A user with no item left is dropped; one with train items but
        no target inside still trains the recommenders and counts in train popularity."""
        keep = set(item_ids)
        catalog = tuple(i for i in self.item_ids if i in keep)
        users = []
        for user in self.users:
            train = tuple(i for i in user.train if i in keep)
            validation, test = (target if target in keep else None for target in (user.validation, user.test))
            if train or validation is not None or test is not None:
                users.append(UserSequence(user.user_id, train, validation, test))
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


def _table_exists(connection, relation: str) -> bool:
    schema, name = relation.split(".")
    return bool(
        fetch_value(
            connection,
            "select count(*) from information_schema.tables "
            f"where table_schema = '{schema}' and table_name = '{name}'",
        )
    )


def load_results(database_path: Path, run_id: str | None = None) -> pl.DataFrame:
    """The rows of one evaluation run from marts.eval_results (default: the latest run)."""
    latest = "(select run_id from marts.eval_results order by created_at desc, run_id limit 1)"
    run = latest if run_id is None else _quoted(run_id)
    with connect_readonly(database_path) as connection:
        if not _table_exists(connection, "marts.eval_results"):
            raise EvaluationInputError(f"no evaluation in {database_path} yet: materialize evaluation/eval_results")
        columns, rows = fetch_rows(connection, f"select * from marts.eval_results where run_id = {run}")
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    if frame.is_empty():
        raise EvaluationInputError(f"no evaluation results{'' if run_id is None else f' for run {run_id}'} in {database_path}")
    return frame


PAIRED_DIFFERENCES = "marts.eval_paired_differences"
PAIRED_SCHEMA = {
    **dict.fromkeys(
        ("run_id", "split", "protocol", "setting", "method", "tag_source_a", "tag_source_b", "bucket", "metric"), pl.String
    ),
    "seed": pl.Int64,
    "mean_difference": pl.Float64,
    "std_error": pl.Float64,
    **dict.fromkeys(("n_users", "n_a_better", "n_b_better"), pl.Int64),
}


@dataclass(frozen=True)
class RunResults:
    """One evaluation run as the claims read it: its rows of marts.eval_results and of
    marts.eval_paired_differences (none for a run evaluated before per-user rows were kept)."""

    results: pl.DataFrame
    paired: pl.DataFrame


def load_run(database_path: Path, run_id: str | None = None) -> RunResults:
    """One run's results and paired differences (default: the latest run)."""
    results = load_results(database_path, run_id)
    with connect_readonly(database_path) as connection:
        rows = []
        if _table_exists(connection, PAIRED_DIFFERENCES):
            query = f"select {', '.join(PAIRED_SCHEMA)} from {PAIRED_DIFFERENCES} where run_id = "
            _, rows = fetch_rows(connection, query + _quoted(results["run_id"][0]))
    return RunResults(results, pl.DataFrame(rows, schema=PAIRED_SCHEMA, orient="row"))


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
