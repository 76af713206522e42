"""Evaluation results as a table (the ``eval_results`` rows), the poster's Tables 1-3, the
claims the asset checks test, and the charts. Plain polars in, text and PNG out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import polars as pl

from dagster_betag.evaluation.recommenders import RECOMMENDERS
from dagster_betag.evaluation.retrieval_methods import RETRIEVAL_METHODS, baseline_method_names, tag_method_names
from dagster_betag.evaluation.runner import ALL_USERS, NO_TAGS, Evaluation, EvaluationConfig
from dagster_betag.evaluation.tag_sources import in_display_order
from dagster_betag.llm.variants import FULL_BETAG, VARIANTS, BetagVariant
from dagster_betag.plots import curves_png, grouped_bars_png

# Table 3's rows: the full method, then its ablations
ABLATION_ORDER = tuple(variant.tag_source for variant in VARIANTS)


def method_label(method: str) -> str:
    """A retrieval method's or recommender's display name."""
    entry = RETRIEVAL_METHODS.get(method) or RECOMMENDERS[method]
    return entry.label


def recommender_columns() -> list[str]:
    """Table 2's columns: the ID-only recommenders, then those that read item texts."""
    return sorted(RECOMMENDERS, key=lambda name: RECOMMENDERS[name].uses_text)


def _variant_with(*, finetuned: bool, multi_beam: bool) -> BetagVariant:
    """The Table 3 row with that finetuning and beam choice."""
    return next(v for v in VARIANTS if (v.finetuned, v.multi_beam) == (finetuned, multi_beam))


def results_frame(
    evaluation: Evaluation, config: EvaluationConfig, *, run_id: str, dataset: str, created_at: str
) -> pl.DataFrame:
    """The rows ``eval_results`` holds, each with its run and protocol recorded."""
    frame = pl.DataFrame([asdict(row) for row in evaluation.rows])
    return frame.with_columns(
        pl.lit(run_id).alias("run_id"),
        pl.lit(dataset).alias("dataset"),
        pl.lit(evaluation.data.n_items).alias("n_items"),
        pl.lit(json.dumps(asdict(config), default=str)).alias("config"),
        pl.lit(created_at).alias("created_at"),
    )


def select(frame: pl.DataFrame, *, split: str = "test", protocol: str = "full", bucket: str = ALL_USERS) -> pl.DataFrame:
    return frame.filter(
        (pl.col("split") == split) & (pl.col("protocol") == protocol) & (pl.col("bucket") == bucket)
    )


def cell_values(frame: pl.DataFrame, method: str, setting: str, source: str, metric: str = "N@10") -> list[float]:
    """One cell's value per seed (a tag-free method's, such as Popular's, whatever the source)."""
    source_filter = pl.col("tag_source") == (NO_TAGS if method in baseline_method_names() else source)
    cell = frame.filter(
        (pl.col("method") == method) & (pl.col("setting") == setting) & source_filter & (pl.col("metric") == metric)
    )
    return cell["value"].to_list()


def metric_value(frame: pl.DataFrame, method: str, setting: str, source: str, metric: str = "N@10") -> float | None:
    """Mean over seeds of one cell, None when it was not measured."""
    values = cell_values(frame, method, setting, source, metric)
    return sum(values) / len(values) if values else None


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _seeds_cell(values: Sequence[float]) -> str:
    """mean, and ± the sample standard deviation over seeds when there are several."""
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f}±{spread:.4f}"


def poster_tables(frame: pl.DataFrame, *, split: str = "test") -> str:
    """Markdown of the poster's Tables 1-3 (retrieval, recommendation, ablations) for both
    protocols: rows are tag sources, columns method x setting x metric."""
    parts = []
    for protocol in ("full", "sampled"):
        chosen = select(frame, split=split, protocol=protocol)
        if chosen.is_empty():
            continue
        label = "full ranking" if protocol == "full" else "sampled: target + 99 random non-interacted items"
        n_users = int(chosen.filter(pl.col("method").is_in(baseline_method_names()))["n_users"].max() or 0)
        parts.append(f"### {split}, {label} ({n_users} users, {int(chosen['n_candidates'].max())} candidates)\n")
        sources = in_display_order(chosen["tag_source"])
        baselines = baseline_method_names()
        parts.append(_table("Table 1: tag-based retrieval", chosen, tag_method_names(), [*baselines, *sources]))
        recommenders = [m for m in recommender_columns() if m in set(chosen["method"])]
        if recommenders:
            title = "Table 2: recommendation (mean±std over seeds)"
            parts.append(_table(title, chosen, recommenders, [*baselines, NO_TAGS, *sources]))
        ablations = [s for s in ABLATION_ORDER if s in sources]
        if len(ablations) > 1:
            parts.append(_table("Table 3: ablations", chosen, tag_method_names(), ablations))
    return "\n".join(parts)


def _table(title: str, frame: pl.DataFrame, methods: Sequence[str], sources: Sequence[str]) -> str:
    columns = [(m, s, metric) for m in methods for s in ("user", "item") for metric in ("H@10", "N@10")]
    header = "| tags | " + " | ".join(f"{method_label(m)} {s} {metric}" for m, s, metric in columns) + " |"
    lines = [f"**{title}**\n", header, "|---" * (len(columns) + 1) + "|"]
    for source in sources:
        # a tag-free method's row shows its one value under every column's setting and metric
        baseline = source in baseline_method_names()
        values = [cell_values(frame, source if baseline else m, s, source, metric) for m, s, metric in columns]
        if not any(values):
            continue
        name = f"{method_label(source)} (no tags)" if baseline else ("ID only" if source == NO_TAGS else source)
        lines.append(f"| {name} | " + " | ".join(_seeds_cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def betag_comparison(
    frame: pl.DataFrame, rivals: Sequence[str] = ("base", "native"), bucket: str = ALL_USERS
) -> tuple[bool, str]:
    """Is BETag at least as good as each rival on N@10 for every retrieval method and
    setting (test split, full ranking, the users whose target is in ``bucket``)? (verdict,
    markdown table)."""
    chosen = select(frame, bucket=bucket)
    lines = ["| method | setting | betag | " + " | ".join(rivals) + " | betag ahead |", "|---" * (4 + len(rivals)) + "|"]
    verdict = True
    for method in tag_method_names():
        for setting in ("user", "item"):
            betag = metric_value(chosen, method, setting, FULL_BETAG.tag_source)
            others = [metric_value(chosen, method, setting, rival) for rival in rivals]
            ahead = betag is not None and all(o is None or betag >= o for o in others)
            verdict &= ahead
            cells = " | ".join(_cell(o) for o in others)
            lines.append(f"| {method} | {setting} | {_cell(betag)} | {cells} | {'yes' if ahead else 'no'} |")
    return verdict, "\n".join(lines)


def cold_start_comparison(frame: pl.DataFrame) -> tuple[bool, str]:
    """BETag against the count-based reference where behavior is scarce: users whose target is
    among the least popular items (the ``cold`` bucket), test split, full ranking."""
    return betag_comparison(frame, rivals=("propagated",), bucket="cold")


def ablation_order(frame: pl.DataFrame) -> tuple[bool, str]:
    """The poster's Table 3 order on N@10: full BETag > without finetuning and > without
    multi-beam, each of those > without both (test split, full ranking, all users)."""
    chosen = select(frame)
    lines = ["| method | setting | " + " | ".join(ABLATION_ORDER) + " | order holds |", "|---" * (3 + len(ABLATION_ORDER)) + "|"]
    verdict = True
    for method in tag_method_names():
        for setting in ("user", "item"):
            values = {v: metric_value(chosen, method, setting, v.tag_source) for v in VARIANTS}
            full, neither = values[FULL_BETAG], values[_variant_with(finetuned=False, multi_beam=False)]
            singles = [value for variant, value in values.items() if variant.finetuned != variant.multi_beam]
            known = None not in values.values()
            holds = known and full > max(singles) and min(singles) > neither
            verdict &= bool(holds)
            cells = " | ".join(_cell(v) for v in values.values())
            lines.append(f"| {method} | {setting} | {cells} | {'yes' if holds else 'no'} |")
    return verdict, "\n".join(lines)


def method_bars_png(frame: pl.DataFrame) -> bytes:
    """N@10 per method and setting, one bar per tag source (test split, full ranking)."""
    chosen = select(frame)
    sources = in_display_order(chosen["tag_source"])
    values = {}
    for method in (*tag_method_names(), *recommender_columns()):
        for setting in ("user", "item"):
            row = {s: metric_value(chosen, method, setting, s) for s in sources}
            row = {s: v for s, v in row.items() if v is not None}
            if row:
                baselines = {b: metric_value(chosen, b, setting, "") for b in baseline_method_names()}
                values[f"{method_label(method)}\n{setting}"] = baselines | row
    return grouped_bars_png(values, "N@10", "test N@10, full ranking")


def beam_curve_png(frame: pl.DataFrame) -> bytes | None:
    """The poster's Fig. 2a: N@10 of BETags aggregated from the first k beams, per method and setting."""
    chosen = select(frame).filter(pl.col("tag_source").str.starts_with("betag:") & (pl.col("metric") == "N@10"))
    if chosen.is_empty():
        return None
    chosen = chosen.with_columns(pl.col("tag_source").str.extract(r"betag:(\d+)_beams").cast(pl.Int64).alias("beams"))
    curves = {}
    for (method, setting), group in chosen.sort("beams").group_by(["method", "setting"], maintain_order=True):
        curves[f"{method_label(method)} {setting}"] = list(zip(group["beams"].to_list(), group["value"].to_list()))
    return curves_png(curves, "generated beams aggregated", "N@10", "beam count vs N@10 (test, full ranking)")
