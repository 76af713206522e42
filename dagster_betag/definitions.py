"""The code location: one Definitions object, assembled from the defs modules."""

from dagster import Definitions

from dagster_betag.defs.assets.sources import dataset_files, landing_tables
from dagster_betag.defs.assets.tagging import base_tags, behavior_adapter, betags, finetune_examples
from dagster_betag.defs.assets.warehouse_models import tag_models, warehouse_models
from dagster_betag.defs.jobs import betag_pipeline
from dagster_betag.defs.resources import build_resources

defs = Definitions(
    assets=[
        dataset_files,
        landing_tables,
        warehouse_models,
        base_tags,
        finetune_examples,
        behavior_adapter,
        betags,
        tag_models,
    ],
    jobs=[betag_pipeline],
    resources=build_resources(),
)
