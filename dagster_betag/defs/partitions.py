"""Item shards: the partitions of the generation assets.

An item belongs to shard ``stable hash(item_id) % n`` (see ``shards.item_shard_of``), with n
from $BETAG_ITEM_SHARDS (default 4). One run can cover every shard (``betag run``, the
schedules: a single-run backfill policy), or each shard can be its own run, in parallel on
one machine or spread over a cluster by Dagster's run launcher.
"""

from dagster import StaticPartitionsDefinition
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_betag import settings

item_shards = StaticPartitionsDefinition([str(shard) for shard in range(settings.item_shard_count())])


def every_item_shard() -> dict[str, str]:
    """Run tags that make one run cover every item shard (what ``betag run`` and the schedules launch)."""
    keys = item_shards.get_partition_keys()
    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
