"""The asset keys of the Python assets: the one place their names are written.

Op names (the keys of a run config's ``ops`` section) are derived from these keys, as
Dagster derives them, so run config, schedules and the CLI never type them as strings.
The dbt models' keys come from their schema and name (``warehouse_models.BetagDbtTranslator``).
"""

from dagster import AssetKey

DATASET_FILES = AssetKey(["source", "dataset_files"])
BASE_TAGS = AssetKey(["llm", "base_tags"])
TAG_VOCABULARY = AssetKey(["llm", "tag_vocabulary"])
FINETUNE_EXAMPLES = AssetKey(["llm", "finetune_examples"])
BEHAVIOR_ADAPTER = AssetKey(["llm", "behavior_adapter"])
BETAGS = AssetKey(["llm", "betags"])
EVAL_RESULTS_SHARDS = AssetKey(["evaluation", "eval_results"])


def landing(table: str) -> AssetKey:
    return AssetKey(["landing", table])


def model(schema: str, name: str) -> AssetKey:
    """A dbt model's asset key: marts.dim_items is ``model("marts", "dim_items")``."""
    return AssetKey([schema, name])


def op_name(key: AssetKey) -> str:
    """The op that materializes a single asset: its key as a Python identifier (llm__base_tags)."""
    return key.to_python_identifier()
