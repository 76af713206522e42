"""Item shards: the partitions of the generation assets.

An item belongs to shard ``stable hash(item_id) % n`` (see ``shards.item_shard_of``), with n
from $BETAG_ITEM_SHARDS (default 4). One run can cover every shard (``betag run``, the
schedules: a single-run backfill policy), or each shard can be its own run, in parallel on
one machine or spread over a cluster by Dagster's run launcher.
"""

from dagster import StaticPartitionsDefinition

from dagster_betag import settings

item_shards = StaticPartitionsDefinition([str(shard) for shard in range(settings.item_shard_count())])
