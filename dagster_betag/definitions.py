"""The code location: one Definitions object, assembled from the defs modules.

It is built by a function, once per process, when Dagster (or ``betag``) loads the code
location, not when this module is imported: the environment it reads (item shards, crons,
resource bindings) is the one in force at load time.
"""

from functools import cache

from dagster import Definitions, definitions

from dagster_betag.defs.assets.evaluation import eval_results
from dagster_betag.defs.assets.sources import dataset_files, landing_tables
from dagster_betag.defs.assets.tagging import behavior_adapter, finetune_examples, item_shard_assets, tag_vocabulary
from dagster_betag.defs.assets.warehouse_models import (
    base_tag_generation_models,
    canonical_base_tag_models,
    evaluation_models,
    tag_models,
    warehouse_models,
)
from dagster_betag.defs.checks import (
    betag_ablation_order,
    betag_beats_base_and_native,
    betag_beats_propagated_on_cold,
    betag_beats_propagated_on_new,
    llm_tag_documents_not_empty,
)
from dagster_betag.defs.jobs import behavior_refresh, betag_pipeline, catalog_refresh, warehouse_build
from dagster_betag.defs.partitions import item_shards
from dagster_betag.defs.resources import build_resources
from dagster_betag.defs.schedules import build_schedules
from dagster_betag.defs.sensors import new_input_files


@cache
def build_definitions() -> Definitions:
    return Definitions(
        assets=[
            dataset_files,
            landing_tables,
            warehouse_models,
            *item_shard_assets(item_shards()),
            base_tag_generation_models,
            tag_vocabulary,
            canonical_base_tag_models,
            finetune_examples,
            behavior_adapter,
            tag_models,
            eval_results,
            evaluation_models,
        ],
        asset_checks=[
            betag_beats_base_and_native,
            betag_beats_propagated_on_cold,
            betag_beats_propagated_on_new,
            betag_ablation_order,
            llm_tag_documents_not_empty,
        ],
        jobs=[betag_pipeline, warehouse_build, catalog_refresh, behavior_refresh],
        schedules=build_schedules(),
        sensors=[new_input_files],
        resources=build_resources(),
    )


@definitions
def defs() -> Definitions:
    """What `dagster dev -w workspace.yaml` and `dagster ... -m dagster_betag.definitions` load."""
    return build_definitions()
