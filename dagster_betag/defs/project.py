"""The dbt project as Dagster sees it.

The manifest is built by ``prepare_if_dev()`` under ``dagster dev``, by ``betag run``, by
``dagster-dbt project prepare-and-package --file dagster_betag/defs/project.py`` before a
deployment, or by a test fixture; never by plain imports.
"""

from dagster_dbt import DbtProject

from dagster_betag.settings import DBT_PROJECT_DIR

betag_dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
betag_dbt_project.prepare_if_dev()
