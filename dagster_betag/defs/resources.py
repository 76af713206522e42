"""Resources: where the dataset and the warehouse are, and the dbt CLI.

Each location defaults to what the library resolves and can be set through the same
environment variables that dbt reads, so the Dagster UI shows where a value came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_dbt import DbtCliResource
from pydantic import Field

from dagster_betag import settings
from dagster_betag.datasets import LandedDataset, read_dataset
from dagster_betag.defs.project import betag_dbt_project
from dagster_betag.warehouse import WarehouseLayout


class DatasetResource(ConfigurableResource):
    """The input dataset: a MovieLens folder (any of its layouts) or a generic items + events export."""

    path: str | None = Field(
        default=None,
        description="Dataset folder; unset: $BETAG_DATASET_DIR, data/ml-latest-small, then ../shared/data/ml-latest-small.",
    )
    format: str = Field(
        default="auto",
        description="auto, movielens-latest, movielens-1m, movielens-100k or generic.",
    )

    def read(self) -> LandedDataset:
        return read_dataset(settings.resolve_dataset_dir(self.path), self.format)


class WarehouseResource(ConfigurableResource):
    """The warehouse folder: the DuckDB file that dbt owns and the landing Parquet files."""

    directory: str = Field(description="Warehouse folder; set it through $BETAG_WAREHOUSE_DIR so dbt agrees.")

    @property
    def layout(self) -> WarehouseLayout:
        return WarehouseLayout(Path(self.directory).resolve())

    def check_dbt_agrees(self) -> None:
        """dbt resolves the same folder from the environment; refuse to build two warehouses."""
        if self.layout.directory != settings.warehouse_dir():
            raise ValueError(
                f"warehouse resource points at {self.layout.directory} but dbt would write to "
                f"{settings.warehouse_dir()}; set {settings.WAREHOUSE_ENV} instead of the resource config"
            )


def _from_env(name: str, default: str | None) -> str | EnvVar | None:
    return EnvVar(name) if os.environ.get(name) else default


def build_resources() -> dict[str, object]:
    return {
        "dataset": DatasetResource(path=_from_env(settings.DATASET_ENV, None)),
        "warehouse": WarehouseResource(
            directory=_from_env(settings.WAREHOUSE_ENV, str(settings.warehouse_dir()))
        ),
        "dbt": DbtCliResource(project_dir=betag_dbt_project),
    }
