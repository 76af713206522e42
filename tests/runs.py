"""Whole-pipeline runs for tests: the small LLM configuration and a built synthetic warehouse."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult

from dagster_betag import settings
from dagster_betag.defs.partitions import every_item_shard
from tests.synthetic import SyntheticMovieLens, write_synthetic_movielens

# the tiny model's tags are random text; a few short beams keep the run to seconds
SMALL_LLM_RUN = {
    "ops": {
        "llm__base_tags": {"config": {"max_new_tokens": 16, "shard_size": 8}},
        "llm__behavior_adapter": {"config": {"batch_size": 4, "max_length": 256}},
        "llm__betags": {"config": {"decoding": {"num_groups": 2, "max_new_tokens": 8}, "shard_size": 8}},
        # the random model leaves many items without base tags: evaluate the whole k-core
        "evaluation__eval_results": {
            "config": {"seeds": [0], "recommender_max_epochs": 2, "restrict_to_llm_tagged": False}
        },
    }
}


def run_pipeline(defs, run_config=None):
    job = defs.resolve_job_def("betag_pipeline")
    return job.execute_in_process(
        run_config=run_config, instance=DagsterInstance.ephemeral(), raise_on_error=False, tags=every_item_shard()
    )


def build_synthetic_warehouse(defs, root: Path, model_dir: Path, *, adapters_dir: Path | None = None):
    """The whole pipeline over a fresh synthetic dataset under ``root`` with the tiny model.

    Returns (dataset, warehouse folder, run result); ``adapters_dir`` keeps the adapter apart
    from the session's (other modules train on the same data, so theirs would be found)."""
    dataset: SyntheticMovieLens = write_synthetic_movielens(root / "dataset")
    warehouse = root / "warehouse"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(settings.DATASET_ENV, str(dataset.folder))
        patch.setenv(settings.WAREHOUSE_ENV, str(warehouse))
        patch.setenv(settings.MODEL_ENV, str(model_dir))
        if adapters_dir is not None:
            patch.setenv(settings.ADAPTERS_ENV, str(adapters_dir))
        result = run_pipeline(defs, SMALL_LLM_RUN)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return dataset, warehouse, result


@dataclass(frozen=True)
class BuiltWarehouse:
    """What one whole-pipeline run over the synthetic dataset left: its dataset, warehouse,
    adapters folder and run result. Shared by the modules of a test process, so never written:
    a test that changes a warehouse or a dataset works on ``copy_to``'s copy."""

    dataset: SyntheticMovieLens
    warehouse: Path
    adapters: Path
    result: ExecuteInProcessResult

    def copy_to(self, root: Path) -> tuple[Path, Path]:
        """A copy of the dataset folder and the warehouse under ``root``: (dataset, warehouse).
        The copy's adapter pointer still names the adapter under ``adapters``."""
        dataset, warehouse = root / "dataset", root / "warehouse"
        shutil.copytree(self.dataset.folder, dataset)
        shutil.copytree(self.warehouse, warehouse)
        return dataset, warehouse


def build_reference_warehouse(defs, root: Path, model_dir: Path) -> BuiltWarehouse:
    """The whole pipeline over a fresh synthetic dataset, with an adapters folder of its own (so
    its adapter is trained, never found from another module's run)."""
    dataset, warehouse, result = build_synthetic_warehouse(defs, root, model_dir, adapters_dir=root / "adapters")
    return BuiltWarehouse(dataset, warehouse, root / "adapters", result)
