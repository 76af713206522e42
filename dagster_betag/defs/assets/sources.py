"""Raw inputs: the dataset files (external) and their landing Parquet tables."""

from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from dagster_betag.datasets import LANDING_SCHEMAS, write_landing
from dagster_betag.defs import keys
from dagster_betag.defs.resources import DatasetResource, WarehouseResource
from dagster_betag.warehouse import markdown_table

dataset_files = AssetSpec(
    key=keys.DATASET_FILES,
    description="The input dataset folder (MovieLens or a generic items + events export); not managed by Dagster.",
    group_name="sources",
)


@multi_asset(
    specs=[
        AssetSpec(
            key=keys.landing(table),
            deps=[dataset_files],
            group_name="landing",
            description=f"Raw {table} rows as text, one Parquet file read by dbt staging.",
        )
        for table in LANDING_SCHEMAS
    ],
)
def landing_tables(context: AssetExecutionContext, dataset: DatasetResource, warehouse: WarehouseResource):
    """Read the dataset with its adapter and write the landing Parquet files, all or nothing."""
    landed = dataset.read()
    with warehouse.writing("landing", context.log.info):
        row_counts = write_landing(landed, warehouse.layout.landing_dir)
    context.log.info(f"landed {landed.name} ({landed.format}) from {landed.source_dir}: {row_counts}")
    for table, frame in landed.tables().items():
        yield MaterializeResult(
            asset_key=keys.landing(table),
            metadata={
                "dagster/row_count": row_counts[table],
                "dataset": landed.name,
                "format": landed.format,
                "source_dir": str(landed.source_dir),
                "path": str(warehouse.layout.landing_dir / f"{table}.parquet"),
                "preview": MetadataValue.md(markdown_table(frame.columns, frame.head(5).rows())),
            },
        )
