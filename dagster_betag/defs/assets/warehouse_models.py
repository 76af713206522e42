"""The dbt models (staging, intermediate, marts) as assets; dbt tests become asset checks."""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetMaterialization, MetadataValue, Output
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from dagster_betag.defs.project import betag_dbt_project
from dagster_betag.defs.resources import WarehouseResource
from dagster_betag.warehouse import TAG_EVIDENCE, connect_readonly, describe_table, popular_tag_evidence_markdown


class BetagDbtTranslator(DagsterDbtTranslator):
    """Models are keyed by their SQL name (marts.dim_items) and grouped by layer."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return AssetKey([dbt_resource_props["source_name"], dbt_resource_props["name"]])
        return AssetKey([dbt_resource_props["schema"], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["schema"]


LLM_OUTPUTS = "tag:llm_outputs"
EVALUATION_OUTPUTS = "tag:evaluation_outputs"
# the tables that later LLM stages read, built as soon as what they read from has landed
BASE_TAG_GENERATIONS = "tag:base_tag_generations"
CANONICAL_BASE_TAGS = "tag:canonical_base_tags"
# the BETag asset runs before dbt builds the tag marts, so why its tags are what they are
# is shown on the mart that says it, for this many of the most popular items
N_EVIDENCE_ITEMS = 5


def dbt_build_step(name: str, doc: str, *, select: str = "fqn:*", exclude: str | None = None):
    """One ``dbt build`` step over a selection of the project, as a multi-asset."""

    @dbt_assets(
        manifest=betag_dbt_project.manifest_path,
        project=betag_dbt_project,
        dagster_dbt_translator=BetagDbtTranslator(),
        select=select,
        exclude=exclude,
        name=name,
    )
    def build_step(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
        yield from _build(context, dbt, warehouse)

    build_step.__doc__ = doc
    return build_step


warehouse_models = dbt_build_step(
    "warehouse_models",
    "``dbt build`` of everything upstream of the LLM: staging, sequences, sessions, catalog.",
    exclude=f"{LLM_OUTPUTS} {EVALUATION_OUTPUTS}",
)
base_tag_generation_models = dbt_build_step(
    "base_tag_generation_models",
    "``dbt build`` of each item's current base-tag generation, which the tag vocabulary is built from.",
    select=BASE_TAG_GENERATIONS,
)
canonical_base_tag_models = dbt_build_step(
    "canonical_base_tag_models",
    "``dbt build`` of marts.item_base_tags: the canonical base tags that finetuning and BETags read.",
    select=CANONICAL_BASE_TAGS,
)
tag_models = dbt_build_step(
    "tag_models",
    "``dbt build`` of the tag tables over the shards the LLM assets wrote.",
    select=LLM_OUTPUTS,
    exclude=f"{BASE_TAG_GENERATIONS} {CANONICAL_BASE_TAGS}",
)
evaluation_models = dbt_build_step(
    "evaluation_models",
    "``dbt build`` of the results tables (eval_results, eval_paired_differences) over the shards the evaluation asset wrote.",
    select=EVALUATION_OUTPUTS,
)


def _build(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
    """``dbt build`` of this asset's models and tests, then row counts and a preview per table
    (and, on marts.item_tag_evidence, the popular items' BETag evidence)."""
    warehouse.check_dbt_agrees()
    # DuckDB has one writer and no writer beside a reader: a second run's build, or a reader in
    # another process, waits here instead of failing inside dbt
    with warehouse.building(context.log.info):
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
        # dbt holds DuckDB's single write lock until it exits, so the tables are read after
        # the build rather than while its events stream in (and before the next run's build).
        events = list(_with_table_metadata(context, list(invocation.stream()), warehouse))
    yield from events
    if not invocation.is_successful():
        raise invocation.get_error()


def _with_table_metadata(
    context: AssetExecutionContext, events: Iterable[Any], warehouse: WarehouseResource
) -> Iterator[Any]:
    if not any(isinstance(event, (Output, AssetMaterialization)) for event in events):
        yield from events
        return
    with connect_readonly(warehouse.layout.database_path) as connection:
        for event in events:
            if isinstance(event, (Output, AssetMaterialization)):
                key = (
                    event.asset_key
                    if isinstance(event, AssetMaterialization)
                    else context.asset_key_for_output(event.output_name)
                )
                relation = ".".join(key.path)
                n_rows, preview = describe_table(connection, relation)
                event = event.with_metadata(
                    {
                        **event.metadata,
                        "dagster/row_count": n_rows,
                        "table": relation,
                        "preview": MetadataValue.md(preview),
                        **_explanations(connection, relation),
                    }
                )
            yield event


def _explanations(connection, relation: str) -> dict:
    """On marts.item_tag_evidence: the evidence behind the most popular items' BETags."""
    if relation != TAG_EVIDENCE:
        return {}
    return {"popular_items": MetadataValue.md(popular_tag_evidence_markdown(connection, N_EVIDENCE_ITEMS))}
