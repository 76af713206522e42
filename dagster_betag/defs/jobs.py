from dagster import AssetSelection, define_asset_job

betag_pipeline = define_asset_job(
    name="betag_pipeline",
    selection=AssetSelection.all(),
    description="Everything that exists: landing tables, then dbt build of staging, intermediate and marts.",
)
