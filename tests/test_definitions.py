"""The code location's shape: nothing read from the environment at import, no private
Dagster API, one name per op and knob, every knob described on the launchpad."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from dagster_betag import settings
from dagster_betag.defs import config, keys, partitions

PACKAGE = Path(settings.REPO_ROOT / "dagster_betag")


def test_importing_the_definitions_reads_no_environment(dbt_manifest):
    """A bad $BETAG_ITEM_SHARDS only fails when the definitions are built, not at import."""
    code = (
        "import dagster_betag.definitions as d\n"
        "try:\n    d.build_definitions()\nexcept ValueError as error:\n    print('built:', error)\n"
    )
    env = {**os.environ, settings.ITEM_SHARDS_ENV: "zero"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"built: {settings.ITEM_SHARDS_ENV} must be a positive integer" in done.stdout


def test_no_private_dagster_imports():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "from dagster._" in path.read_text() or "import dagster._" in path.read_text()
    ]
    assert offenders == []


def test_partition_range_tags_are_dagsters():
    assert (partitions.PARTITION_RANGE_START_TAG, partitions.PARTITION_RANGE_END_TAG) == (
        ASSET_PARTITION_RANGE_START_TAG,
        ASSET_PARTITION_RANGE_END_TAG,
    )
    assert partitions.every_item_shard(partitions.item_shards(3)) == {
        ASSET_PARTITION_RANGE_START_TAG: "0",
        ASSET_PARTITION_RANGE_END_TAG: "2",
    }


def test_op_names_come_from_the_asset_keys(defs):
    for key in (keys.BASE_TAGS, keys.TAG_VOCABULARY, keys.FINETUNE_EXAMPLES, keys.BEHAVIOR_ADAPTER, keys.BETAGS):
        assert defs.get_assets_def(key).op.name == keys.op_name(key)
    ops = config.profile_run_config("full")["ops"]
    assert set(ops) <= {node.name for node in defs.resolve_job_def("betag_pipeline").graph.node_defs}


@pytest.mark.parametrize(
    "run_config", [config.BaseTagsRunConfig, config.BetagsRunConfig, config.EvaluationRunConfig, config.BehaviorAdapterRunConfig]
)
def test_every_knob_is_described_on_the_launchpad(run_config):
    def undescribed(model, prefix=""):
        for name, field in model.model_fields.items():
            if not field.description:
                yield prefix + name
            if isinstance(field.annotation, type) and issubclass(field.annotation, config.Config):
                yield from undescribed(field.annotation, f"{prefix}{name}.")

    assert list(undescribed(run_config)) == []


def test_num_groups_has_one_name_from_the_run_config_to_the_decoding_loop():
    from dagster_betag.llm.betag import BetagConfig
    from dagster_betag.llm.decoding import DiverseBeamConfig

    run = config.BetagsRunConfig(decoding={"num_groups": 7, "length_penalty": 0.5})
    library = config.to_dataclass(run, BetagConfig)
    assert isinstance(library.decoding, DiverseBeamConfig)
    assert (library.decoding.num_groups, library.decoding.length_penalty) == (7, 0.5)
    assert "num_groups" not in {field.name for field in dataclasses.fields(BetagConfig)}
