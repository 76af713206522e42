"""What the scheduled refreshes decide on (library code, no Dagster).

- ``input_files_fingerprint``: has the dataset folder changed since the last look? Names,
  sizes and modification times, so a multi-GB catalog costs a directory listing, not a read.
  (Which items changed is decided later, per item, by the hash of its description.)
- ``behavior_growth``: how much train behavior arrived since the current adapter was trained,
  which decides whether re-finetuning is worth its cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dagster_betag.hashing import stable_hash
from dagster_betag.tag_store import current_adapter
from dagster_betag.warehouse import SUMMARY_QUERIES, WarehouseLayout, connect_readonly, fetch_value


def input_files_fingerprint(folder: Path) -> str:
    """A hash of every file's relative name, size and modification time under ``folder``."""
    entries = sorted(
        (str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".")
        for stat in [path.stat()]
    )
    return stable_hash(entries)


def train_interaction_count(layout: WarehouseLayout) -> int:
    with connect_readonly(layout.database_path) as connection:
        return int(fetch_value(connection, SUMMARY_QUERIES["train_interactions"]))


@dataclass(frozen=True)
class BehaviorGrowth:
    adapter_id: str | None
    n_train_interactions_then: int  # when the current adapter was trained (0: no adapter)
    n_train_interactions_now: int

    @property
    def n_new(self) -> int:
        return self.n_train_interactions_now - self.n_train_interactions_then

    def warrants_refinetune(self, min_new_interactions: int) -> bool:
        return self.adapter_id is None or self.n_new >= min_new_interactions


def behavior_growth(layout: WarehouseLayout) -> BehaviorGrowth:
    pointer = current_adapter(layout) or {}
    return BehaviorGrowth(
        adapter_id=pointer.get("adapter_id"),
        # adapters trained before the count was recorded count as trained on nothing new
        n_train_interactions_then=int(pointer.get("n_train_interactions", 0)),
        n_train_interactions_now=train_interaction_count(layout),
    )
