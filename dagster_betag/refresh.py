"""What the scheduled refreshes decide on (library code, no Dagster).

- ``input_files_fingerprint``: has the dataset folder changed since the last look? Names,
  sizes and modification times, so a multi-GB catalog costs a directory listing, not a read.
  (Which items changed is decided later, per item, by the hash of its description.)
- ``behavior_growth``: how much learnable train behavior (train interactions with items that
  are not new: what finetuning reads) arrived since the current adapter was trained, which
  decides whether re-finetuning is worth its cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dagster_betag.hashing import stable_hash
from dagster_betag.tag_store import current_adapter
from dagster_betag.warehouse import SUMMARY_QUERIES, WarehouseLayout, connect_readonly, fetch_value


ADAPTER_LEARNABLE_COUNT = "n_learnable_train_interactions"  # the adapter pointer's record of what it learned from


def input_files_fingerprint(folder: Path) -> str:
    """A hash of every file's relative name, size and modification time under ``folder``."""
    entries = sorted(
        (str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".")
        for stat in [path.stat()]
    )
    return stable_hash(entries)


def learnable_interaction_count(layout: WarehouseLayout) -> int:
    """Train interactions the pipeline learns from (``marts.fct_interactions.is_learnable``)."""
    with connect_readonly(layout.database_path) as connection:
        return int(fetch_value(connection, SUMMARY_QUERIES["learnable_train_interactions"]))


@dataclass(frozen=True)
class BehaviorGrowth:
    adapter_id: str | None
    n_learnable_then: int  # learnable train interactions when the current adapter was trained (0: no adapter)
    n_learnable_now: int

    @property
    def n_new(self) -> int:
        return self.n_learnable_now - self.n_learnable_then

    def warrants_refinetune(self, min_new_interactions: int) -> bool:
        return self.adapter_id is None or self.n_new >= min_new_interactions


def behavior_growth(layout: WarehouseLayout) -> BehaviorGrowth:
    pointer = current_adapter(layout) or {}
    return BehaviorGrowth(
        adapter_id=pointer.get("adapter_id"),
        # adapters trained before the count was recorded count as trained on nothing
        n_learnable_then=int(pointer.get(ADAPTER_LEARNABLE_COUNT, 0)),
        n_learnable_now=learnable_interaction_count(layout),
    )
