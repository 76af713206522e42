"""Read-only access to the warehouse DuckDB file (library code, no Dagster).

dbt is the only writer of the DuckDB file; everything in Python opens it read-only, so a
reader can never corrupt it. A read-only connection in one process still keeps dbt in another
from opening the file for writing, so readers share a lock that a dbt build holds alone
(``readers_lock_path``, ``locks.reading``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import duckdb

from dagster_betag.locks import reading

DATABASE_FILE = "betag.duckdb"
LANDING_FOLDER = "landing"
LOCKS_FOLDER = "locks"


@dataclass(frozen=True)
class WarehouseLayout:
    """The files of one warehouse folder."""

    directory: Path

    @property
    def database_path(self) -> Path:
        return self.directory / DATABASE_FILE

    @property
    def landing_dir(self) -> Path:
        return self.directory / LANDING_FOLDER

    @property
    def locks_dir(self) -> Path:
        return self.directory / LOCKS_FOLDER


def readers_lock_path(database_path: Path) -> Path:
    """The lock the readers of ``database_path`` share and a dbt build of it holds alone."""
    return database_path.parent / LOCKS_FOLDER / f"{database_path.name}.readers"


class WarehouseQueryError(ValueError):
    """A query the warehouse refused or could not answer (the message is one line)."""


@contextmanager
def connect_readonly(
    database_path: Path, *, sandboxed: bool = False, wait_s: float = 600.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection; ``sandboxed`` also turns off file and network access, so a
    user's query can neither write the warehouse nor read or write files beside it.

    While another process (a dbt build) holds DuckDB's write lock, no reader can open the
    file: wait up to ``wait_s`` seconds for it, then fail with one line."""
    if not database_path.exists():
        raise FileNotFoundError(f"no warehouse at {database_path}; run `betag run` first")
    config = {"enable_external_access": False} if sandboxed else {}
    deadline = time.monotonic() + wait_s
    with reading(readers_lock_path(database_path), f"warehouse {database_path}", timeout_s=wait_s):
        while True:  # a writer outside the locks (dbt by hand) still holds DuckDB's own lock
            try:
                connection = duckdb.connect(str(database_path), read_only=True, config=config)
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise WarehouseQueryError(
                        f"cannot open {database_path} read-only: {str(error).splitlines()[0]}"
                    ) from None
                time.sleep(0.5)
        try:
            yield connection
        finally:
            connection.close()


def markdown_table(columns: list[str], rows: list[tuple], max_chars: int = 60) -> str:
    """A GitHub-markdown table; long cells are shortened so previews stay readable."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def fetch_rows(connection: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of a query."""
    cursor = connection.execute(sql)
    return [column[0] for column in cursor.description], cursor.fetchall()


def fetch_value(connection: duckdb.DuckDBPyConnection, sql: str):
    """The single value of a one-row, one-column query."""
    return connection.execute(sql).fetchone()[0]


def describe_table(connection: duckdb.DuckDBPyConnection, relation: str, n_preview: int = 5) -> tuple[int, str]:
    """Row count and a markdown preview of ``relation`` (schema.table)."""
    n_rows = fetch_value(connection, f"select count(*) from {relation}")
    return n_rows, markdown_table(*fetch_rows(connection, f"select * from {relation} limit {n_preview}"))


# The figures a user wants after a build, each one SQL query over the marts.
SUMMARY_QUERIES: dict[str, str] = {
    "catalog_items": "select count(*) from marts.dim_items",
    "kcore_items": "select count(*) from marts.dim_items where is_in_kcore",
    "new_items": "select count(*) from marts.dim_items where is_new_item",
    "kcore_users": "select count(*) from marts.fct_user_sequences",
    "kcore_interactions": "select count(*) from marts.fct_interactions",
    "train_interactions": "select count(*) from marts.fct_interactions where split = 'train'",
    "learnable_train_interactions": "select count(*) from marts.fct_interactions where is_learnable",
    "validation_interactions": "select count(*) from marts.fct_interactions where split = 'validation'",
    "test_interactions": "select count(*) from marts.fct_interactions where split = 'test'",
    "behavior_sessions": "select count(*) from marts.fct_behavior_sessions",
    "session_items": "select coalesce(sum(n_items), 0) from marts.fct_behavior_sessions",
    "native_tags": "select count(*) from marts.fct_item_native_tags",
    "quarantined_rows": "select count(*) from staging.stg_quarantined_rows",
}


def summarize(database_path: Path) -> dict[str, int]:
    """The headline counts of a built warehouse."""
    with connect_readonly(database_path) as connection:
        return {name: fetch_value(connection, sql) for name, sql in SUMMARY_QUERIES.items()}


def quarantine_counts(database_path: Path) -> list[tuple[str, str, int]]:
    """(source table, reason, rows) for every kind of rejected input row."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection,
            "select source_table, rejection_reason, count(*) from staging.stg_quarantined_rows "
            "group by all order by 1, 2",
        )
        return rows


def popular_kcore_items(database_path: Path, max_items: int | None) -> list[dict]:
    """Catalog rows of the k-core items, most popular (train interactions) first."""
    limit = "" if max_items is None else f"limit {int(max_items)}"
    with connect_readonly(database_path) as connection:
        columns, rows = fetch_rows(
            connection,
            "select i.item_id, i.title, i.description, i.attributes "
            "from marts.dim_items i join marts.fct_item_popularity p using (item_id) "
            f"where i.is_in_kcore order by p.popularity_rank {limit}",
        )
    return [dict(zip(columns, row)) for row in rows]


def tagging_scope(database_path: Path, max_items: int | None) -> list[dict]:
    """Catalog rows of the items the LLM stages tag: the ``max_items`` most popular k-core
    items (all with None), then every item added after the catalog's first load, behavior or
    not (BETags of a new item need none)."""
    popular = popular_kcore_items(database_path, max_items)
    chosen = {row["item_id"] for row in popular}
    with connect_readonly(database_path) as connection:
        columns, rows = fetch_rows(
            connection,
            "select item_id, title, description, attributes from marts.dim_items "
            "where is_added_after_first_load order by first_seen_at, item_id",
        )
    arrivals = [dict(zip(columns, row)) for row in rows]
    return popular + [row for row in arrivals if row["item_id"] not in chosen]


def natively_tagged_items(database_path: Path, n: int, min_tags: int) -> list[dict]:
    """Catalog rows of the ``n`` items with the most distinct human (native) tags, at least
    ``min_tags``, each with ``native_tags`` most used first (the catalog's own few-shot examples).
    Only the tag file's tags count: attribute values standing in for native tags (genres) are
    in the prompt already and would teach the model to repeat them."""
    with connect_readonly(database_path) as connection:
        columns, rows = fetch_rows(
            connection,
            "select d.item_id, d.title, d.description, d.attributes, "
            "list(t.tag order by t.n_taggings desc, t.tag) as native_tags "
            "from marts.dim_items d join marts.fct_item_native_tags t using (item_id) "
            "where t.origin = 'tag_file' "
            f"group by all having count(*) >= {int(min_tags)} "
            f"order by count(*) desc, any_value(d.n_train_interactions) desc, d.item_id limit {int(n)}",
        )
    return [dict(zip(columns, row)) for row in rows]


def behavior_sessions(database_path: Path) -> list[tuple[str, list[str]]]:
    """(session_id, item ids in order) of every train behavior session."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(connection, "select session_id, item_ids from marts.fct_behavior_sessions order by session_id")
    return [(session_id, list(item_ids)) for session_id, item_ids in rows]


def session_recency(database_path: Path) -> dict[str, float]:
    """session id -> rank of its end among all train behavior sessions, 0 (oldest) to 1 (latest)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection,
            "select session_id, percent_rank() over (order by ended_at, session_id) from marts.fct_behavior_sessions",
        )
    return dict(rows)


def train_successors(database_path: Path) -> dict[str, list[tuple[str, int]]]:
    """item id -> (next item id, train transitions) of its train successors, most frequent first
    (``intermediate.int_item_transitions_counted``, what the count-based reference reads)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(
            connection,
            "select item_id, list(next_item_id order by successor_rank), "
            "list(n_transitions order by successor_rank) "
            "from intermediate.int_item_transitions_counted group by item_id",
        )
    return {item_id: list(zip(next_ids, counts, strict=True)) for item_id, next_ids, counts in rows}


def item_titles(database_path: Path) -> dict[str, str]:
    """item id -> title, of every catalog item (``marts.dim_items``)."""
    with connect_readonly(database_path) as connection:
        _, rows = fetch_rows(connection, "select item_id, title from marts.dim_items")
    return {item_id: title for item_id, title in rows}


def run_user_query(database_path: Path, sql: str, max_rows: int) -> tuple[list[str], list[tuple], bool]:
    """Columns, at most ``max_rows`` rows, and whether more rows exist, of a user's query.

    The connection is read-only and sandboxed: INSERT, CREATE, COPY ... TO, ATTACH and
    reading files all fail with WarehouseQueryError.
    """
    with connect_readonly(database_path, sandboxed=True, wait_s=30) as connection:
        try:
            cursor = connection.execute(sql)
            if cursor.description is None:
                return [], [], False
            columns = [column[0] for column in cursor.description]
            rows = cursor.fetchmany(max_rows + 1)
        except duckdb.Error as error:
            raise WarehouseQueryError(str(error).strip().splitlines()[0]) from None
    return columns, rows[:max_rows], len(rows) > max_rows


@dataclass(frozen=True)
class ItemTags:
    """One item's tags from every source, for people looking at a single item."""

    item_id: str
    title: str
    attributes: str
    other_matches: list[tuple[str, str]]  # (item_id, title) of further title matches
    native: list[tuple]  # (tag, n_users)
    base: list[str]
    betags: list[tuple]  # (tag, weight = beams containing it, score)
    betag_adapter: str | None


def item_tags(database_path: Path, key: str, max_matches: int = 5) -> ItemTags:
    """The item whose id is ``key``, else the most popular one whose title contains it."""
    with connect_readonly(database_path) as connection:
        matches = connection.execute(
            """select i.item_id, i.title, coalesce(i.attributes_text, '')
               from marts.dim_items i left join marts.fct_item_popularity p using (item_id)
               where i.item_id = $key or i.title ilike '%' || $key || '%'
               order by i.item_id = $key desc, p.popularity_rank nulls last, i.item_id
               limit $n""",
            {"key": key, "n": max_matches + 1},
        ).fetchall()
        if not matches:
            raise WarehouseQueryError(f"no item with id or title matching {key!r}")
        item_id, title, attributes = matches[0]
        # the tag marts exist once the LLM stages ran; before that an item has native tags only
        queries = {
            "native": ("fct_item_native_tags", "select tag, n_users from marts.fct_item_native_tags "
                       "where item_id = $id order by n_users desc, tag"),
            "base": ("item_base_tags", "select tag from marts.item_base_tags where item_id = $id order by tag_rank"),
            "betags": ("item_betags", "select tag, weight, round(score, 3), adapter_id from marts.item_betags "
                       "where item_id = $id order by tag_rank"),
        }
        existing = _mart_names(connection)
        found = {
            name: connection.execute(sql, {"id": item_id}).fetchall() if table in existing else []
            for name, (table, sql) in queries.items()
        }
    return ItemTags(
        item_id=item_id,
        title=title,
        attributes=attributes,
        other_matches=[(i, t) for i, t, _ in matches[1:]],
        native=found["native"],
        base=[tag for (tag,) in found["base"]],
        betags=[row[:3] for row in found["betags"]],
        betag_adapter=found["betags"][0][3] if found["betags"] else None,
    )


def _mart_names(connection: duckdb.DuckDBPyConnection) -> set[str]:
    """The tables of the marts schema (the tag marts exist once the LLM stages ran)."""
    _, rows = fetch_rows(connection, "select table_name from information_schema.tables where table_schema = 'marts'")
    return {name for (name,) in rows}


TAG_EVIDENCE = "marts.item_tag_evidence"


@dataclass(frozen=True)
class TagEvidence:
    """Where one BETag of an item comes from: a row of marts.item_tag_evidence (the fields are
    its columns, selected by name)."""

    tag: str
    is_in_base_tags: bool | None  # None: the generation kept no base-tag beam
    n_generated_beams_with_tag: int
    n_generated_beams: int
    n_successors_with_tag: int
    n_train_successors: int
    n_transitions_with_tag: int
    n_train_transitions: int
    top_successors: list[dict]  # {item_id, title, n_transitions}, most transitions first

    def cells(self) -> tuple[str, ...]:
        """The row of ``EVIDENCE_COLUMNS``."""
        in_base_tags = {True: "yes", False: "no", None: "-"}[self.is_in_base_tags]
        top = "; ".join(f"{successor['title']} ({successor['n_transitions']})" for successor in self.top_successors)
        return (
            self.tag,
            f"{self.n_generated_beams_with_tag}/{self.n_generated_beams}",
            in_base_tags,
            f"{self.n_successors_with_tag} of {self.n_train_successors}",
            f"{self.n_transitions_with_tag} of {self.n_train_transitions}",
            top or "-",
        )


EVIDENCE_COLUMNS = [
    "tag", "generated beams", "in base tags", "train successors with it", "their transitions",
    "top successors (transitions)",
]  # fmt: skip


@dataclass(frozen=True)
class ItemTagEvidence:
    """The evidence behind each of one item's BETags, best tag first."""

    item_id: str
    query: str  # the SQL the rows came from, for a reader to run again
    tags: list[TagEvidence]

    def markdown(self) -> str:
        return markdown_table(EVIDENCE_COLUMNS, [evidence.cells() for evidence in self.tags], max_chars=120)


def _read_tag_evidence(connection: duckdb.DuckDBPyConnection, item_id: str) -> ItemTagEvidence:
    literal = item_id.replace("'", "''")
    query = (
        f"select {', '.join(field.name for field in fields(TagEvidence))} from {TAG_EVIDENCE} "
        f"where item_id = '{literal}' order by tag_rank"
    )
    columns, rows = fetch_rows(connection, query)
    return ItemTagEvidence(item_id, query, [TagEvidence(**dict(zip(columns, row))) for row in rows])


def item_tag_evidence(database_path: Path, item_id: str) -> ItemTagEvidence:
    """Why item ``item_id`` has each of its current BETags (no rows: it has none)."""
    with connect_readonly(database_path) as connection:
        if TAG_EVIDENCE.split(".")[1] not in _mart_names(connection):
            raise WarehouseQueryError(f"no {TAG_EVIDENCE} in {database_path} yet; `betag refresh` builds it")
        return _read_tag_evidence(connection, item_id)


def popular_tag_evidence_markdown(connection: duckdb.DuckDBPyConnection, n_items: int) -> str:
    """One markdown table of the evidence behind the BETags of the ``n_items`` most popular
    items that have BETags, each row led by the item's title."""
    _, items = fetch_rows(
        connection,
        "select p.item_id, i.title from marts.fct_item_popularity p join marts.dim_items i using (item_id) "
        f"where p.item_id in (select item_id from {TAG_EVIDENCE}) order by p.popularity_rank limit {int(n_items)}",
    )
    rows = [
        (title, *evidence.cells())
        for item_id, title in items
        for evidence in _read_tag_evidence(connection, item_id).tags
    ]
    return markdown_table(["item", *EVIDENCE_COLUMNS], rows, max_chars=120)
