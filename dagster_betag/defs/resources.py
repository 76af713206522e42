"""Resources: where the dataset and the warehouse are, and the dbt CLI.

Each location defaults to what the library resolves and can be set through the same
environment variables that dbt reads, so the Dagster UI shows where a value came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource, EnvVar
from dagster_dbt import DbtCliResource
from pydantic import Field

from dagster_betag import settings
from dagster_betag.datasets import AUTO_FORMAT, FORMAT_CHOICES, LandedDataset, read_dataset
from dagster_betag.defs.project import betag_dbt_project
from dagster_betag.llm.api import DEFAULT_API_KEY_ENV, DEFAULT_MAX_CONCURRENCY, ApiConfig, ApiTagger
from dagster_betag.knobs import knob_description
from dagster_betag.llm.heap import release_freed_memory
from dagster_betag.llm.model import (
    DEFAULT_MODEL,
    LLMConfig,
    LoadedLLM,
    ModelIdentity,
    load_llm,
    model_identity,
)
from dagster_betag.llm.tagger import DeferredTagger, Tagger
from dagster_betag.locks import excluding_readers, exclusive
from dagster_betag.warehouse import WarehouseLayout, readers_lock_path

# the part of the warehouse a dbt build writes: the DuckDB file
DUCKDB_PART = "duckdb"


class DatasetResource(ConfigurableResource):
    """The input dataset: a MovieLens folder (any of its layouts) or a generic items + events export."""

    path: str | None = Field(
        default=None,
        description="Dataset folder; unset: $BETAG_DATASET_DIR, data/ml-latest-small, then ../shared/data/ml-latest-small.",
    )
    format: str = Field(default=AUTO_FORMAT, description=f"Dataset layout: {', '.join(FORMAT_CHOICES)}.")

    def read(self) -> LandedDataset:
        return read_dataset(settings.resolve_dataset_dir(self.path), self.format)


class WarehouseResource(ConfigurableResource):
    """The warehouse folder: the DuckDB file that dbt owns and the landing Parquet files."""

    directory: str = Field(description="Warehouse folder; set it through $BETAG_WAREHOUSE_DIR so dbt agrees.")

    @property
    def layout(self) -> WarehouseLayout:
        return WarehouseLayout(Path(self.directory).resolve())

    lock_timeout_s: float = Field(
        default=settings.DEFAULT_LOCK_TIMEOUT_S,
        description="How long a writing step waits for another run holding the same part of the warehouse.",
    )

    def writing(self, part: str, log=None):
        """Exclusive access to ``part`` (the DuckDB file, an item shard of a table) for one step."""
        return exclusive(
            self.layout.locks_dir / f"{part}.lock", f"warehouse {part}", timeout_s=self.lock_timeout_s, log=log
        )

    @contextmanager
    def building(self, log=None) -> Iterator[None]:
        """What a dbt build holds: the DuckDB file's writer lock (one build at a time), then its
        readers' lock alone, so no reader in another process has the file open when dbt opens it."""
        database = self.layout.database_path
        with self.writing(DUCKDB_PART, log), excluding_readers(
            readers_lock_path(database), f"warehouse {database}", timeout_s=self.lock_timeout_s
        ):
            yield

    def check_dbt_agrees(self) -> None:
        """dbt resolves the same folder from the environment; refuse to build two warehouses."""
        if self.layout.directory != settings.warehouse_dir():
            raise ValueError(
                f"warehouse resource points at {self.layout.directory} but dbt would write to "
                f"{settings.warehouse_dir()}; set {settings.WAREHOUSE_ENV} instead of the resource config"
            )


class LLMResource(ConfigurableResource):
    """The base LLM. Tests bind a tiny model folder here; a GPU box binds an 8B model."""

    model: str = Field(
        default=DEFAULT_MODEL,
        description="Registry name of the embedded default, a Hugging Face model folder, or a .gguf file.",
    )
    gguf_file: str | None = Field(default=None, description="GGUF file name inside `model` when it is a folder.")
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu or cuda.")
    dtype: str = Field(default="auto", description=knob_description(LLMConfig, "dtype"))
    api_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API root (http://host:8000/v1) writing the base tags; unset: the local model.",
    )
    api_model: str | None = Field(default=None, description="Model name the API serves; needed with api_base_url.")
    api_key_env: str = Field(
        default=DEFAULT_API_KEY_ENV, description="Environment variable holding the API key (none sent when unset)."
    )
    api_max_concurrency: int = Field(default=DEFAULT_MAX_CONCURRENCY, description="API requests in flight at once.")

    def _config(self) -> LLMConfig:
        return LLMConfig(model=self.model, gguf_file=self.gguf_file, device=self.device, dtype=self.dtype)

    def identity(self) -> ModelIdentity:
        """Name, fingerprint and precision of the local model, without loading it."""
        return model_identity(self._config())

    def load(self) -> LoadedLLM:
        """A fresh model each call: finetuning wraps the weights it is given, so no two
        assets may share one in memory (reloading the cached safetensors takes < 1 s). The heap
        the run's earlier stages freed goes back to the operating system first."""
        release_freed_memory()
        return load_llm(self._config())

    def base_tagger(self, cache_dir: Path) -> Tagger:
        """What writes base tags: the model behind ``api_base_url`` when set (its answers cached
        under ``cache_dir``, so a rerun asks nothing twice), else the local model, loaded only
        once there is something to tag."""
        if self.api_base_url is None:
            return DeferredTagger(model_identity(self._config()), self.load)
        config = ApiConfig(
            base_url=self.api_base_url,
            model=self.api_model or "",
            api_key_env=self.api_key_env,
            max_concurrency=self.api_max_concurrency,
        )
        return ApiTagger(config, cache_dir)


def _from_env(name: str, default: str | None) -> str | EnvVar | None:
    return EnvVar(name) if os.environ.get(name) else default


def build_resources() -> dict[str, object]:
    """The resources, bound to the environment variables that are set when this is called
    (an EnvVar resolves when a run starts, so the UI shows where each value came from)."""
    return {
        "dataset": DatasetResource(
            path=_from_env(settings.DATASET_ENV, None), format=_from_env(settings.DATASET_FORMAT_ENV, AUTO_FORMAT)
        ),
        "warehouse": WarehouseResource(
            directory=_from_env(settings.WAREHOUSE_ENV, str(settings.warehouse_dir())),
            lock_timeout_s=settings.lock_timeout_s(),
        ),
        "dbt": DbtCliResource(project_dir=betag_dbt_project),
        "llm": LLMResource(model=_from_env(settings.MODEL_ENV, DEFAULT_MODEL), dtype=_from_env(settings.DTYPE_ENV, "auto")),
    }
