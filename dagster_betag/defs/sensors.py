"""A sensor on the input dataset: new or changed files launch a catalog refresh."""

from dagster import SensorEvaluationContext, SkipReason, sensor

from dagster_betag import settings
from dagster_betag.datasets import DatasetError
from dagster_betag.defs.jobs import catalog_refresh
from dagster_betag.defs.resources import DatasetResource
from dagster_betag.defs.schedules import REFRESH_OPS, refresh_run_request
from dagster_betag.refresh import input_files_fingerprint


@sensor(
    job=catalog_refresh,
    minimum_interval_seconds=60,
    description="Launches catalog_refresh when a file of the dataset folder is added, removed or changed.",
)
def new_input_files(context: SensorEvaluationContext, dataset: DatasetResource):
    try:
        folder = settings.resolve_dataset_dir(dataset.path)
    except DatasetError as error:
        return SkipReason(str(error))
    fingerprint = input_files_fingerprint(folder)
    if context.cursor is None:
        context.update_cursor(fingerprint)
        return SkipReason(f"watching {folder}; its current files are the baseline")
    if fingerprint == context.cursor:
        return SkipReason(f"no change in {folder}")
    context.update_cursor(fingerprint)
    return refresh_run_request(REFRESH_OPS, run_key=fingerprint, launched_by="new_input_files")
