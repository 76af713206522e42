"""Shared fixtures: a real dbt manifest, real DuckDB warehouses in temporary folders.

The Dagster resources bind BETAG_WAREHOUSE_DIR and BETAG_DATASET_DIR as EnvVars when
those are set at import, and EnvVars resolve when a run starts; so the session sets both
before anything imports the definitions, and each test points them at its own folders.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from dagster_betag import settings

SESSION_ROOT = Path(tempfile.mkdtemp(prefix="betag-tests-"))
os.environ[settings.WAREHOUSE_ENV] = str(SESSION_ROOT / "unused-warehouse")
os.environ[settings.DATASET_ENV] = str(SESSION_ROOT / "unused-dataset")
settings.put_interpreter_tools_on_path()

SHARED_ML_LATEST_SMALL = settings.REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """Parse the dbt project once (what `dagster dev` or `betag run` do before loading)."""
    from dagster_betag.defs.project import betag_dbt_project

    betag_dbt_project.preparer.prepare(betag_dbt_project)
    return betag_dbt_project.manifest_path


@pytest.fixture(scope="session")
def defs(dbt_manifest):
    from dagster_betag.definitions import defs

    return defs


@pytest.fixture
def point_at(monkeypatch):
    """Point the pipeline at a dataset folder and a warehouse folder for one test."""

    def _point_at(dataset_dir: Path, warehouse_dir: Path) -> None:
        monkeypatch.setenv(settings.DATASET_ENV, str(dataset_dir))
        monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse_dir))

    return _point_at


@pytest.fixture
def ml_latest_small() -> Path:
    if not SHARED_ML_LATEST_SMALL.is_dir():
        pytest.skip(f"the default dataset is not at {SHARED_ML_LATEST_SMALL}")
    return SHARED_ML_LATEST_SMALL
