"""Schedules: a daily catalog refresh and a weekly re-finetune when behavior has grown.

Cron strings come from the environment when the definitions are built, the threshold and the
profile at each tick, so a deployment changes them without code: BETAG_REFRESH_CRON (default
daily 03:00), BETAG_REFINETUNE_CRON (default Sundays 04:00),
BETAG_REFINETUNE_MIN_NEW_INTERACTIONS (default 1000 train interactions), and BETAG_PROFILE
for the scope of both.
"""

from dagster import RunRequest, ScheduleDefinition, ScheduleEvaluationContext, SkipReason, schedule

from dagster_betag import settings
from dagster_betag.defs import keys
from dagster_betag.defs.config import profile_run_config
from dagster_betag.defs.jobs import behavior_refresh, catalog_refresh
from dagster_betag.defs.partitions import every_item_shard
from dagster_betag.defs.resources import WarehouseResource
from dagster_betag.refresh import behavior_growth

REFRESH_OPS = tuple(keys.op_name(key) for key in (keys.BASE_TAGS, keys.BETAGS))
REFINETUNE_OPS = tuple(keys.op_name(key) for key in (keys.FINETUNE_EXAMPLES, keys.BETAGS))


def refresh_run_request(ops, run_key: str | None = None, **tags: str) -> RunRequest:
    """A run over every item shard, scoped by $BETAG_PROFILE (quick by default)."""
    profile = settings.schedule_profile()
    return RunRequest(
        run_key=run_key,
        run_config=profile_run_config(profile, ops=ops),
        tags={**every_item_shard(), "betag/profile": profile, **tags},
    )


def build_schedules() -> list[ScheduleDefinition]:
    """The two schedules, on the crons the environment sets now."""
    refresh_cron, refinetune_cron = settings.schedule_crons()

    @schedule(
        job=catalog_refresh,
        cron_schedule=refresh_cron,
        description="Daily: tag the items that are new or whose description changed; nothing else is regenerated.",
    )
    def daily_catalog_refresh(context: ScheduleEvaluationContext):
        return refresh_run_request(REFRESH_OPS, launched_by="daily_catalog_refresh")

    @schedule(
        job=behavior_refresh,
        cron_schedule=refinetune_cron,
        description="Weekly: finetune the adapter again and regenerate BETags, when enough new behavior arrived.",
    )
    def weekly_refinetune(context: ScheduleEvaluationContext, warehouse: WarehouseResource):
        if not warehouse.layout.database_path.is_file():
            return SkipReason(f"no warehouse at {warehouse.layout.directory} yet")
        growth, threshold = behavior_growth(warehouse.layout), settings.refinetune_threshold()
        if not growth.warrants_refinetune(threshold):
            return SkipReason(
                f"{growth.n_new} new learnable train interactions since adapter {growth.adapter_id} "
                f"(threshold {threshold}); not finetuning again"
            )
        context.log.info(
            f"{growth.n_new} new learnable train interactions since adapter {growth.adapter_id}: finetuning again"
        )
        return refresh_run_request(REFINETUNE_OPS, launched_by="weekly_refinetune")

    return [daily_catalog_refresh, weekly_refinetune]
