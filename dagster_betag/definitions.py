"""The code location: one Definitions object, assembled from the defs modules."""

from dagster import Definitions

from dagster_betag.defs.assets.evaluation import eval_results
from dagster_betag.defs.assets.sources import dataset_files, landing_tables
from dagster_betag.defs.assets.tagging import base_tags, behavior_adapter, betags, finetune_examples, tag_vocabulary
from dagster_betag.defs.assets.warehouse_models import evaluation_models, tag_models, warehouse_models
from dagster_betag.defs.checks import (
    betag_ablation_order,
    betag_beats_base_and_native,
    betag_beats_propagated_on_cold,
    llm_tag_documents_not_empty,
)
from dagster_betag.defs.jobs import behavior_refresh, betag_pipeline, catalog_refresh, warehouse_build
from dagster_betag.defs.resources import build_resources
from dagster_betag.defs.schedules import daily_catalog_refresh, weekly_refinetune
from dagster_betag.defs.sensors import new_input_files

defs = Definitions(
    assets=[
        dataset_files,
        landing_tables,
        warehouse_models,
        base_tags,
        tag_vocabulary,
        finetune_examples,
        behavior_adapter,
        betags,
        tag_models,
        eval_results,
        evaluation_models,
    ],
    asset_checks=[
        betag_beats_base_and_native,
        betag_beats_propagated_on_cold,
        betag_ablation_order,
        llm_tag_documents_not_empty,
    ],
    jobs=[betag_pipeline, warehouse_build, catalog_refresh, behavior_refresh],
    schedules=[daily_catalog_refresh, weekly_refinetune],
    sensors=[new_input_files],
    resources=build_resources(),
)
