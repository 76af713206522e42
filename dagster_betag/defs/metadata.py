"""Asset metadata shared by the LLM assets: run counts and the figures that say whether tags
are usable, with the chart of the most frequent ones."""

from collections import Counter
from collections.abc import Mapping, Sequence

from dagster import MetadataValue

from dagster_betag.llm.fit import FitMeasures
from dagster_betag.plots import markdown_image, tag_frequency_png
from dagster_betag.shards import RunCounts
from dagster_betag.warehouse import markdown_table


def run_counts_metadata(counts: RunCounts) -> dict:
    return {
        "n_generated": counts.n_generated,
        "n_new": counts.n_generated - counts.n_changed,
        "n_changed": counts.n_changed,
        "n_skipped_already_done": counts.n_skipped,
        # unreadable shards (cut by a power loss, say) moved to quarantine/; their items were generated again
        "n_quarantined_shards": counts.n_quarantined,
        "seconds": round(counts.seconds, 1),
        "seconds_per_item": round(counts.seconds / max(1, counts.n_generated), 3),
    }


def tag_quality_metadata(tags_by_item: Mapping[str, Sequence[str]], what: str) -> dict:
    """Coverage, tags per item, distinct tags, and the most frequent ones (junk shows there)."""
    counts = Counter(tag for tags in tags_by_item.values() for tag in tags)
    n_items = max(1, len(tags_by_item))
    return {
        "n_items_tagged": len(tags_by_item),
        "share_with_3_tags": round(sum(len(t) >= 3 for t in tags_by_item.values()) / n_items, 4),
        "mean_tags_per_item": round(sum(map(len, tags_by_item.values())) / n_items, 2),
        "n_distinct_tags": len(counts),
        "top_tags": MetadataValue.md(markdown_image(tag_frequency_png(counts.most_common(20), f"most frequent {what}"), what)),
    }


def plain_values(metadata: Mapping[str, object], prefix: str) -> dict:
    """``metadata``'s scalar entries under ``prefix/`` (charts and tables left out)."""
    return {f"{prefix}/{key}": value for key, value in metadata.items() if not isinstance(value, MetadataValue)}


FIT_CURVE_MEASURES = ("in_sample_fit", "in_sample_fit_of_other_items", "beam_jaccard")


def epochs_metadata(epochs: Sequence[Mapping[str, float]]) -> dict:
    """An adapter's per-epoch records (epoch 0: before training): the validation loss and, with
    a fit curve, the in-sample fit and beam Jaccard, as a table and as before/after figures."""
    if not epochs:  # an adapter trained before epochs were recorded
        return {}
    columns = list(dict.fromkeys(name for record in epochs for name in record))
    rows = [tuple(round(v, 4) if isinstance(v, float) else v for v in map(record.get, columns)) for record in epochs]
    before, after = epochs[0], epochs[-1]
    return {
        "epochs": MetadataValue.md(markdown_table(columns, rows)),
        **{f"{name}_before": before[name] for name in FIT_CURVE_MEASURES if name in before},
        **{f"{name}_last_epoch": after[name] for name in FIT_CURVE_MEASURES if name in after},
    }


def fit_metadata(measures: FitMeasures) -> dict:
    """Does the decode carry behavior (``llm/fit.py``): in-sample fit and input sensitivity, each
    with its reference."""
    return {f"fit/{name}": value for name, value in measures.metadata().items()}
