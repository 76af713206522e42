"""Asset checks: does BETag deliver (on the latest evaluation), and are the tag documents usable.

The BETag checks read the latest run's rows of ``marts.eval_results`` and its paired
differences (``marts.eval_paired_differences``): a claim passes only when BETag is ahead by
two paired standard errors in every cell; behind by two, it "does not hold"; in between it is
"within noise". They WARN rather than fail, so a run whose tags lose still lands its tables
and its numbers. A claim the run could not test (no ablations decoded, no cold or new
bucket) says "not measured (...)", not that it failed.
"""

from collections.abc import Callable

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from dagster_betag.defs import keys
from dagster_betag.defs.resources import WarehouseResource
from dagster_betag.evaluation.data import EvaluationInputError, RunResults, load_run
from dagster_betag.evaluation.report import (
    ClaimResult,
    Verdict,
    ablation_order,
    betag_comparison,
    cold_start_comparison,
    new_item_comparison,
)
from dagster_betag.evaluation.tag_sources import llm_tag_source_names
from dagster_betag.warehouse import connect_readonly, fetch_rows, markdown_table

BETAGS = keys.BETAGS
EVAL_RESULTS = keys.model("marts", "eval_results")
PAIRED_DIFFERENCES = keys.model("marts", "eval_paired_differences")
TAG_DOCUMENTS = keys.model("marts", "item_tag_documents")
MAX_EMPTY_SHARE = 0.05
# the metadata entry that marks a claim check's result (and holds its verdict)
VERDICT = "verdict"


def claim_check(name: str, description: str, claim: Callable[[RunResults], ClaimResult], what: str):
    """An asset check on the BETags that tests ``claim`` on the latest evaluation and WARNs
    with its comparison table when it does not hold or was not measured; the check's
    description is ``what: <verdict>``, e.g. ``...: not measured (run with --ablations)``."""

    @asset_check(asset=BETAGS, name=name, additional_deps=[EVAL_RESULTS, PAIRED_DIFFERENCES], description=description)
    def check(warehouse: WarehouseResource) -> AssetCheckResult:
        try:
            run = load_run(warehouse.layout.database_path)
        except EvaluationInputError as missing:  # BETags decoded before any evaluation ran
            return AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.WARN,
                description=f"{what}: not measured ({missing})",
                metadata={VERDICT: Verdict.NOT_MEASURED.value},
            )
        result = claim(run)
        return AssetCheckResult(
            passed=result.holds,
            severity=AssetCheckSeverity.WARN,
            description=f"{what}: {result.summary()}",
            metadata={VERDICT: result.verdict.value, "comparison": MetadataValue.md(result.table)},
        )

    return check


betag_beats_base_and_native = claim_check(
    "betag_beats_base_and_native",
    "BETag N@10 above base tags and native tags by two paired standard errors for BM25 and BiRank, "
    "user- and item-based (test, full ranking).",
    betag_comparison,
    "BETag ahead of base and native tags everywhere",
)
betag_beats_propagated_on_cold = claim_check(
    "betag_beats_propagated_on_cold",
    "On users whose target is a cold item (least popular half), BETag N@10 above the count-based propagated "
    "tags by two paired standard errors for BM25 and BiRank, user- and item-based (test, full ranking).",
    cold_start_comparison,
    "BETag ahead of count-based propagation on cold items",
)
betag_beats_propagated_on_new = claim_check(
    "betag_beats_propagated_on_new",
    "On users whose target is a new item (nothing learned from its behavior; its propagated tags are its own "
    "base tags), BETag N@10 above base tags and the count-based propagated tags by two paired standard errors "
    "for BM25 and BiRank, user- and item-based (test, full ranking).",
    new_item_comparison,
    "BETag ahead of base tags and count-based propagation on new items",
)
betag_ablation_order = claim_check(
    "betag_ablation_order",
    "The poster's Table 3 order, each step by two paired standard errors: BETag > without finetuning, "
    "without multi-beam > without both.",
    ablation_order,
    "the ablation order of Table 3",
)


@asset_check(
    asset=TAG_DOCUMENTS,
    description=f"Among items with base tags, at most {MAX_EMPTY_SHARE:.0%} have an empty document of any LLM tag source.",
)
def llm_tag_documents_not_empty(warehouse: WarehouseResource) -> AssetCheckResult:
    sources = ", ".join(f"'{source}'" for source in llm_tag_source_names())
    with connect_readonly(warehouse.layout.database_path) as connection:
        columns, rows = fetch_rows(
            connection,
            "with tagged as (select item_id from marts.item_tag_documents where tag_source = 'base' and n_tags > 0) "
            "select tag_source, count(*) as n_items, count(*) filter (where n_tags = 0) as n_empty, "
            "round(n_empty / count(*), 4) as empty_share "
            f"from marts.item_tag_documents join tagged using (item_id) where tag_source in ({sources}) "
            "group by tag_source having count(*) filter (where n_tags > 0) > 0 order by tag_source",
        )
    worst = max((row[3] for row in rows), default=0.0)
    return AssetCheckResult(
        passed=worst <= MAX_EMPTY_SHARE,
        metadata={"max_empty_share": float(worst), "per_source": MetadataValue.md(markdown_table(columns, rows))},
    )
