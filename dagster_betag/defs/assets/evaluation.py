"""The evaluation: every tag source under retrieval (and recommendation), written as one
shard of result rows that dbt turns into ``marts.eval_results`` and one shard of the per-user
rows they average, from which dbt computes ``marts.eval_paired_differences``."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from dagster_betag import settings
from dagster_betag.defs import keys
from dagster_betag.defs.config import EvaluationRunConfig, to_dataclass
from dagster_betag.defs.resources import DatasetResource, WarehouseResource
from dagster_betag.evaluation.data import load_tag_popularity
from dagster_betag.evaluation.report import beam_curve_png, method_bars_png, poster_tables, results_frame
from dagster_betag.evaluation.retrieval_methods import RETRIEVAL_METHODS, tag_method_names
from dagster_betag.evaluation.runner import EvaluationConfig, evaluate_warehouse, split_user_counts
from dagster_betag.evaluation.tag_sources import tag_source_names
from dagster_betag.llm.pipeline import now_text
from dagster_betag.plots import markdown_image, rank_frequency_png
from dagster_betag.shards import ShardedTable

EVAL_RESULTS_FOLDER = "eval_results"
EVAL_USER_METRICS_FOLDER = "eval_user_metrics"


@asset(
    key=keys.EVAL_RESULTS_SHARDS,
    deps=[
        keys.model("marts", "item_tag_documents"),
        keys.model("marts", "item_betag_beams"),
        keys.model("marts", "fct_user_sequences"),
    ],
    group_name="evaluation",
    description=(
        f"H@10 / N@10 of every tag source ({', '.join(tag_source_names())}) under "
        f"{' and '.join(RETRIEVAL_METHODS[name].label for name in tag_method_names())} retrieval, "
        "user- and item-based, full ranking and sampled; one results shard and one per-user shard per run."
    ),
)
def eval_results(
    context: AssetExecutionContext, config: EvaluationRunConfig, dataset: DatasetResource, warehouse: WarehouseResource
):
    evaluation_config = to_dataclass(config, EvaluationConfig)
    evaluation = evaluate_warehouse(warehouse.layout.database_path, evaluation_config, context.log.info)
    dataset_name = Path(settings.resolve_dataset_dir(dataset.path)).name
    frame = results_frame(
        evaluation, evaluation_config, run_id=context.run.run_id, dataset=dataset_name, created_at=now_text()
    )
    run_key = {"run_id": context.run.run_id}
    results = ShardedTable(warehouse.layout.landing_dir / EVAL_RESULTS_FOLDER, run_key)
    user_metrics = ShardedTable(warehouse.layout.landing_dir / EVAL_USER_METRICS_FOLDER, run_key)
    results.write(frame)
    user_metrics.write(evaluation.user_metrics)
    for table in (results, user_metrics):
        table.publish()
    charts = {
        "n_at_10_by_method": method_bars_png(frame),
        "beam_count_curve": beam_curve_png(frame),
        "tag_popularity": rank_frequency_png(
            load_tag_popularity(warehouse.layout.database_path), "tag popularity per source"
        ),
    }
    reports = warehouse.layout.directory / "reports" / context.run.run_id
    reports.mkdir(parents=True, exist_ok=True)
    for name, png in charts.items():
        if png is not None:
            (reports / f"{name}.png").write_bytes(png)
    metadata = {
        "dagster/row_count": frame.height,
        "n_items": evaluation.data.n_items,
        **split_user_counts(evaluation.data),
        "n_user_metric_rows": evaluation.user_metrics.height,
        "tag_sources": ", ".join(evaluation.sources),
        "folder": str(results.shard_folder),
        "charts_folder": str(reports),
        "tables": MetadataValue.md(poster_tables(frame)),
        **{name: MetadataValue.md(markdown_image(png, name)) for name, png in charts.items() if png is not None},
    }
    return MaterializeResult(metadata=metadata)
