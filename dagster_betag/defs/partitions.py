"""Item shards: the partitions of the generation assets.

An item belongs to shard ``stable hash(item_id) % n`` (see ``shards.item_shard_of``), with n
from $BETAG_ITEM_SHARDS (default 4), read when the definitions are built, not at import.
One run can cover every shard (``betag run``, the schedules: a single-run backfill policy),
or each shard can be its own run, in parallel on one machine or spread over a cluster by
Dagster's run launcher.
"""

from dagster import StaticPartitionsDefinition

from dagster_betag import settings

# Dagster's run tags for a run over a range of partitions (as the UI's backfills set them)
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def item_shards(n_shards: int | None = None) -> StaticPartitionsDefinition:
    """The item-shard partitions: ``n_shards``, else $BETAG_ITEM_SHARDS (default 4)."""
    n = settings.item_shard_count() if n_shards is None else n_shards
    return StaticPartitionsDefinition([str(shard) for shard in range(n)])


def every_item_shard(partitions: StaticPartitionsDefinition | None = None) -> dict[str, str]:
    """Run tags that make one run cover every item shard (what ``betag run`` and the schedules launch)."""
    keys = (partitions or item_shards()).get_partition_keys()
    return {PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]}
