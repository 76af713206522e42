"""Where things live: the repository's folders and the two locations a user configures.

Library code (no Dagster). Both knobs are environment variables so that Python and dbt,
which runs as a subprocess from dbt_project/, resolve the same paths:

- ``BETAG_WAREHOUSE_DIR``: the folder holding the DuckDB file and the landing Parquet.
- ``BETAG_DATASET_DIR``: the input dataset folder.
- ``BETAG_DATASET_FORMAT``: its layout (auto, movielens-latest, ..., generic).
- ``BETAG_MODEL``: the base LLM (registry name, model folder or .gguf file).
- ``BETAG_DTYPE``: the precision it runs in (``LLMConfig.dtype``: auto, float32, bfloat16, ...).
- ``BETAG_ADAPTERS_DIR``: where finetuned LoRA adapters are saved.
- ``DAGSTER_HOME``: the Dagster instance (run history, materializations, check results) that
  `betag run`, `betag refresh` and `betag ui` share; default the git-ignored .dagster_home/.
- ``BETAG_ITEM_SHARDS``: how many item shards the generation assets are partitioned into.
- ``BETAG_PROFILE``: the profile (quick, full) of the scheduled refreshes.
- ``BETAG_LOCK_TIMEOUT_S``: how long a writing step waits for another run (default 600).
- ``BETAG_REFRESH_CRON``, ``BETAG_REFINETUNE_CRON``, ``BETAG_REFINETUNE_MIN_NEW_INTERACTIONS``:
  the schedules (see ``defs/schedules.py``).

Every value is read when it is needed (a run, building the definitions), never at import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dagster_betag.datasets import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
DEFAULT_DATASET = "ml-latest-small"

WAREHOUSE_ENV = "BETAG_WAREHOUSE_DIR"
DATASET_ENV = "BETAG_DATASET_DIR"
DATASET_FORMAT_ENV = "BETAG_DATASET_FORMAT"
MODEL_ENV = "BETAG_MODEL"
DTYPE_ENV = "BETAG_DTYPE"
ADAPTERS_ENV = "BETAG_ADAPTERS_DIR"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
ITEM_SHARDS_ENV = "BETAG_ITEM_SHARDS"
PROFILE_ENV = "BETAG_PROFILE"
LOCK_TIMEOUT_ENV = "BETAG_LOCK_TIMEOUT_S"
REFRESH_CRON_ENV = "BETAG_REFRESH_CRON"
REFINETUNE_CRON_ENV = "BETAG_REFINETUNE_CRON"
REFINETUNE_THRESHOLD_ENV = "BETAG_REFINETUNE_MIN_NEW_INTERACTIONS"
DEFAULT_ITEM_SHARDS = 4
DEFAULT_LOCK_TIMEOUT_S = 600.0


def put_interpreter_tools_on_path() -> None:
    """Let subprocesses find the `dbt` installed beside this Python, venv activated or not."""
    tools = str(Path(sys.executable).parent)
    if tools not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = tools + os.pathsep + os.environ.get("PATH", "")


def warehouse_dir() -> Path:
    """The warehouse folder: $BETAG_WAREHOUSE_DIR, else the git-ignored warehouse/."""
    return Path(os.environ.get(WAREHOUSE_ENV) or REPO_ROOT / "warehouse").resolve()


def adapters_dir() -> Path:
    """LoRA adapters: $BETAG_ADAPTERS_DIR, else the git-ignored models/adapters/."""
    return Path(os.environ.get(ADAPTERS_ENV) or REPO_ROOT / "models" / "adapters").resolve()


def dagster_home() -> Path:
    """The Dagster instance folder: $DAGSTER_HOME, else the git-ignored .dagster_home/, so that
    the runs of `betag run` are the runs the UI shows."""
    return Path(os.environ.get(DAGSTER_HOME_ENV) or REPO_ROOT / ".dagster_home").resolve()


def item_shard_count() -> int:
    """Item shards of the generation assets: $BETAG_ITEM_SHARDS, else 4. Changing it moves
    items between shards, so already generated tags are found again but land in new folders."""
    text = os.environ.get(ITEM_SHARDS_ENV) or str(DEFAULT_ITEM_SHARDS)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ITEM_SHARDS_ENV} must be a positive integer, got {text!r}")
    return int(text)


def lock_timeout_s() -> float:
    """How long a writing step waits for another run: $BETAG_LOCK_TIMEOUT_S, else 600."""
    return float(os.environ.get(LOCK_TIMEOUT_ENV) or DEFAULT_LOCK_TIMEOUT_S)


def schedule_profile() -> str:
    """The profile (quick, full) of the scheduled refreshes: $BETAG_PROFILE, else quick."""
    return os.environ.get(PROFILE_ENV) or "quick"


def schedule_crons() -> tuple[str, str]:
    """(catalog refresh cron, re-finetune cron): $BETAG_REFRESH_CRON, $BETAG_REFINETUNE_CRON."""
    return os.environ.get(REFRESH_CRON_ENV) or "0 3 * * *", os.environ.get(REFINETUNE_CRON_ENV) or "0 4 * * 0"


def refinetune_threshold() -> int:
    """New train interactions that warrant finetuning again: $BETAG_REFINETUNE_MIN_NEW_INTERACTIONS, else 1000."""
    return int(os.environ.get(REFINETUNE_THRESHOLD_ENV) or "1000")


def dataset_candidates(configured: str | os.PathLike | None = None) -> list[Path]:
    """Where the dataset is looked for, in order of precedence."""
    explicit = configured or os.environ.get(DATASET_ENV)
    if explicit:
        return [Path(explicit).expanduser().resolve()]
    return [
        REPO_ROOT / "data" / DEFAULT_DATASET,
        # the read-only copy this workplace lays beside the repository
        REPO_ROOT.parent / "shared" / "data" / DEFAULT_DATASET,
    ]


def resolve_dataset_dir(configured: str | os.PathLike | None = None) -> Path:
    """The first existing dataset folder, or a one-line error that says how to get one."""
    candidates = dataset_candidates(configured)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(
        f"no dataset folder found (looked in {looked}); run `betag fetch-data` "
        f"or set {DATASET_ENV} to a dataset folder"
    )
