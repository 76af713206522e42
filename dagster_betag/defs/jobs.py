"""Jobs: the whole pipeline, the warehouse alone, and the two refreshes the schedules launch."""

from dagster import AssetSelection, define_asset_job

from dagster_betag.defs import keys
from dagster_betag.defs.assets.sources import landing_tables
from dagster_betag.defs.assets.tagging import behavior_adapter, finetune_examples, tag_vocabulary
from dagster_betag.defs.assets.warehouse_models import (
    base_tag_generation_models,
    canonical_base_tag_models,
    tag_models,
    warehouse_models,
)
from dagster_betag.defs.checks import (
    betag_ablation_order,
    betag_beats_base_and_native,
    betag_beats_propagated_on_cold,
    betag_beats_propagated_on_new,
)

# they judge the latest evaluation, which a refresh does not redo
EVALUATION_CLAIMS = AssetSelection.checks(
    betag_beats_base_and_native, betag_beats_propagated_on_cold, betag_beats_propagated_on_new, betag_ablation_order
)


betag_pipeline = define_asset_job(
    name="betag_pipeline",
    selection=AssetSelection.all(),
    description="Everything: landing, dbt build, base tags, finetuning, BETags, tag tables, evaluation.",
)

warehouse_build = define_asset_job(
    name="warehouse_build",
    selection=AssetSelection.assets(landing_tables, warehouse_models),
    description="Landing tables and the dbt models upstream of the LLM; loads no model, so it takes seconds.",
)

catalog_refresh = define_asset_job(
    name="catalog_refresh",
    selection=AssetSelection.assets(
        landing_tables,
        warehouse_models,
        keys.BASE_TAGS,
        base_tag_generation_models,
        tag_vocabulary,
        canonical_base_tag_models,
        keys.BETAGS,
        tag_models,
    )
    - EVALUATION_CLAIMS,
    description=(
        "Land the inputs again, rebuild the warehouse, tag the items that are new or whose description "
        "changed (base tags, the tag vocabulary extended with their tags, then BETags with the current adapter) "
        "and rebuild the tag tables."
    ),
)

behavior_refresh = define_asset_job(
    name="behavior_refresh",
    selection=AssetSelection.assets(finetune_examples, behavior_adapter, keys.BETAGS, tag_models) - EVALUATION_CLAIMS,
    description="Finetune the adapter again on the behavior so far and decode every item's BETags with it.",
)
