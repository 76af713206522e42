"""Evaluation results as a table (the ``eval_results`` rows), the poster's Tables 1-3, the
claims the asset checks test, and the charts. Plain polars in, text and PNG out.

Every cell carries its standard error over users and every table its number of users. A
claim is judged on paired differences (marts.eval_paired_differences: the same users under
two tag sources), holding only two paired standard errors ahead; one whose inputs the run
lacks is NOT_MEASURED rather than failed, and a poster table too noisy to separate its tag
sources says so under it (``cannot_separate``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from itertools import combinations

import polars as pl

from dagster_betag.evaluation.data import RunResults
from dagster_betag.evaluation.metrics import METRICS
from dagster_betag.evaluation.recommenders import RECOMMENDERS
from dagster_betag.evaluation.retrieval_methods import RETRIEVAL_METHODS, baseline_method_names, tag_method_names
from dagster_betag.evaluation.runner import ALL_USERS, NEW_ITEMS, NO_TAGS, Evaluation, EvaluationConfig
from dagster_betag.evaluation.tag_sources import in_display_order, registered_paired_comparisons
from dagster_betag.llm.variants import ABLATIONS, FULL_BETAG, VARIANTS, BetagVariant
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


@dataclass(frozen=True)
class Estimate:
    """One table cell over its seeds: the mean ``value``, the per-user standard error
    sd/sqrt(n) averaged over the seeds, the sample standard deviation of the value over the
    seeds (None for one seed), and the number of users each seed averaged over."""

    value: float
    std_error: float
    seeds_sd: float | None
    n_users: int


def cell_estimate(frame: pl.DataFrame, method: str, setting: str, source: str, metric: str = "N@10") -> Estimate | None:
    """One cell (a tag-free method's, such as Popular's, whatever the source), None when it
    was not measured."""
    source_filter = pl.col("tag_source") == (NO_TAGS if method in baseline_method_names() else source)
    cell = frame.filter(
        (pl.col("method") == method) & (pl.col("setting") == setting) & source_filter & (pl.col("metric") == metric)
    )
    if cell.is_empty():
        return None
    values = cell["value"].to_list()
    mean = sum(values) / len(values)
    seeds_sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return Estimate(mean, sum(cell["std_error"].to_list()) / len(values), seeds_sd, int(cell["n_users"].min()))


def metric_value(frame: pl.DataFrame, method: str, setting: str, source: str, metric: str = "N@10") -> float | None:
    """Mean over seeds of one cell, None when it was not measured."""
    estimate = cell_estimate(frame, method, setting, source, metric)
    return None if estimate is None else estimate.value


def separated(a: Estimate, b: Estimate) -> bool:
    """Do two cells differ by more than two standard errors of their difference,
    |a - b| > 2·sqrt(SE_a² + SE_b²)? The independent-samples approximation, kept for the
    poster tables, which compare every tag source with every other rather than the pairs
    marts.eval_paired_differences holds (the claims use those): the cells share their users,
    and as tag sources tend to rank the same users well, it overstates rather than understates
    the noise of the difference."""
    return abs(a.value - b.value) > 2 * math.hypot(a.std_error, b.std_error)


def cannot_separate(comparisons: Iterable[Sequence[Estimate]]) -> bool:
    """The caution rule of the poster tables: True when some comparison (a column: the tag
    sources' cells for one method, setting and metric) holds two cells or more, and in none of
    them are any two cells ``separated``."""
    compared = [cells for cells in comparisons if len(cells) > 1]
    return bool(compared) and not any(separated(a, b) for cells in compared for a, b in combinations(cells, 2))


def _cell(estimate: Estimate | None) -> str:
    """``0.0990 ±0.021``, and ``(seeds sd 0.003)`` after it when it is a mean over seeds."""
    if estimate is None:
        return "–"
    seeds = "" if estimate.seeds_sd is None else f" (seeds sd {estimate.seeds_sd:.3f})"
    return f"{estimate.value:.4f} ±{estimate.std_error:.3f}{seeds}"


def _users(estimates: Iterable[Estimate | PairedEstimate]) -> str:
    """``74 users``, or the range when the cells averaged over different numbers of users."""
    counts = sorted({estimate.n_users for estimate in estimates})
    if not counts:
        return "no users"
    return f"{counts[0]} users" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} users"


def _notes(estimates: Sequence[Estimate], comparisons: Sequence[Sequence[Estimate]]) -> list[str]:
    """The lines under a table: what ± means, what the seeds sd is when a cell has one, and
    the caution when the table ``cannot_separate`` its tag sources (compared along its
    columns)."""
    seeds = any(estimate.seeds_sd is not None for estimate in estimates)
    legend = "± one standard error over users, sd/√n" + (
        "; a cell over several seeds shows their mean value, their mean ±, and the value's sd over seeds"
        if seeds
        else ""
    )
    lines = [legend]
    if cannot_separate(comparisons):
        lines.append(
            f"caution: {_users(estimates)}; no two tag sources differ by more than two standard errors "
            f"(2·√(SE_a² + SE_b²)) in any column — this table cannot separate them."
        )
    return lines


def poster_tables(frame: pl.DataFrame, *, split: str = "test") -> str:
    """Markdown of the poster's Tables 1-3 (retrieval, recommendation, ablations) for both
    protocols: rows are tag sources, columns method x setting x metric; each cell is its value
    ± its standard error over users, each title carries its number of users, and a caution
    follows a table whose tag sources ``cannot_separate`` in any column."""
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
            parts.append(_table("Table 2: recommendation", chosen, recommenders, [*baselines, NO_TAGS, *sources]))
        ablations = [s for s in ABLATION_ORDER if s in sources]
        if len(ablations) > 1:
            parts.append(_table("Table 3: ablations", chosen, tag_method_names(), ablations))
    return "\n".join(parts)


def _table(title: str, frame: pl.DataFrame, methods: Sequence[str], sources: Sequence[str]) -> str:
    columns = [(m, s, metric) for m in methods for s in ("user", "item") for metric in METRICS]
    rows, measured, tag_rows = [], [], []
    for source in sources:
        # a tag-free method's row shows its one value under every column's setting and metric
        baseline = source in baseline_method_names()
        cells = [cell_estimate(frame, source if baseline else m, s, source, metric) for m, s, metric in columns]
        if not any(cells):
            continue
        name = f"{method_label(source)} (no tags)" if baseline else ("ID only" if source == NO_TAGS else source)
        rows.append(f"| {name} | " + " | ".join(_cell(cell) for cell in cells) + " |")
        measured += [cell for cell in cells if cell is not None]
        if not baseline and source != NO_TAGS:  # Popular and ID only are references, not compared tag sources
            tag_rows.append(cells)
    header = "| tags | " + " | ".join(f"{method_label(m)} {s} {metric}" for m, s, metric in columns) + " |"
    lines = [f"**{title}** ({_users(measured)})\n", header, "|---" * (len(columns) + 1) + "|", *rows]
    by_column = [[cells[i] for cells in tag_rows if cells[i] is not None] for i in range(len(columns))]
    return "\n".join([*lines, "", *_notes(measured, by_column)]) + "\n"


class Verdict(Enum):
    """A claim's verdict on one run, from paired differences (``paired_verdict``): HOLDS when
    every cell is ahead by two paired standard errors, DOES_NOT_HOLD when some cell is behind
    by two, WITHIN_NOISE otherwise (not shown either way: no pass); NOT_MEASURED (the run
    lacks its inputs) is no evidence either way."""

    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    WITHIN_NOISE = "within noise"
    NOT_MEASURED = "not measured"


# a paired difference is told apart from zero when it is this many standard errors away
SEPARATION_IN_STD_ERRORS = 2.0


@dataclass(frozen=True)
class PairedEstimate:
    """One claim cell: tag source a minus b over the same users (marts.eval_paired_differences),
    over its seeds: the mean difference Δ = mean_u(m_u(a) - m_u(b)) and its standard error
    sd(d)/√n, each averaged over the seeds as ``cell_estimate`` averages values and errors
    (None when a seed had one user), and the fewest users a seed paired."""

    difference: float
    std_error: float | None
    n_users: int

    @property
    def verdict(self) -> Verdict:
        """HOLDS when Δ > 0 and Δ >= 2·SE, DOES_NOT_HOLD when Δ < 0 and -Δ >= 2·SE, else WITHIN_NOISE."""
        if self.std_error is None or abs(self.difference) < SEPARATION_IN_STD_ERRORS * self.std_error:
            return Verdict.WITHIN_NOISE
        if self.difference > 0:
            return Verdict.HOLDS
        return Verdict.DOES_NOT_HOLD if self.difference < 0 else Verdict.WITHIN_NOISE


def paired_estimate(paired: pl.DataFrame, a: str, b: str, method: str, setting: str, metric: str = "N@10") -> PairedEstimate | None:
    """The ``a`` - ``b`` cell of one method and setting (``paired`` already narrowed to a split,
    protocol and bucket), None when the run has no paired rows for it."""
    cell = paired.filter(
        (pl.col("tag_source_a") == a) & (pl.col("tag_source_b") == b) & (pl.col("method") == method)
        & (pl.col("setting") == setting) & (pl.col("metric") == metric)
    )  # fmt: skip
    if cell.is_empty():
        return None
    errors = cell["std_error"].to_list()
    std_error = None if any(e is None for e in errors) else sum(errors) / len(errors)
    return PairedEstimate(float(cell["mean_difference"].mean()), std_error, int(cell["n_users"].min()))


def combined_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """All cells HOLDS: HOLDS; any DOES_NOT_HOLD: DOES_NOT_HOLD; else WITHIN_NOISE."""
    found = set(verdicts)
    if Verdict.DOES_NOT_HOLD in found:
        return Verdict.DOES_NOT_HOLD
    return Verdict.HOLDS if found == {Verdict.HOLDS} else Verdict.WITHIN_NOISE


def _paired_cell(estimate: PairedEstimate | None) -> str:
    """``Δ +0.0123 ±0.004``; ``±–`` when a seed had one user."""
    if estimate is None:
        return "–"
    error = "–" if estimate.std_error is None else f"{estimate.std_error:.3f}"
    return f"Δ {estimate.difference:+.4f} ±{error}"


@dataclass(frozen=True)
class ClaimResult:
    """A claim tested on one run: its verdict, the markdown comparison table it was decided
    on, and, when NOT_MEASURED, which inputs the run lacks (and how to get them)."""

    verdict: Verdict
    table: str
    missing: str = ""

    @property
    def holds(self) -> bool:
        return self.verdict is Verdict.HOLDS

    def summary(self) -> str:
        """``holds``, ``does not hold``, ``within noise`` or ``not measured (<what is missing>)``."""
        return f"{self.verdict.value} ({self.missing})" if self.verdict is Verdict.NOT_MEASURED else self.verdict.value


Pair = tuple[str, str]  # (a, b): the claim says a is better than b
# one comparison of a claim: (method, setting, metric, each pair's paired cell)
ClaimRow = tuple[str, str, str, dict[Pair, PairedEstimate | None]]


def _claim(
    run: RunResults,
    bucket: str,
    pairs: Sequence[Pair],
    hints: Mapping[str, str] | None = None,
) -> ClaimResult:
    """Test that a beats b for every (a, b) of ``pairs`` on H@10 and N@10 (test split, full
    ranking, the users whose target is in ``bucket``), for every retrieval method and setting, by the
    run's paired differences (marts.eval_paired_differences): each cell's verdict is
    ``PairedEstimate.verdict``, the claim's ``combined_verdict`` of them all. It is
    NOT_MEASURED when any cell is missing: the run's eval_results rows tell a source it did
    not evaluate (``hints`` say how to) from a pair it did not compare."""
    unregistered = [pair for pair in pairs if pair not in registered_pairs()]
    if unregistered:
        raise ValueError(f"{unregistered} are not in the betag_paired_comparisons var (dbt_project.yml)")
    chosen = run.paired.filter(
        (pl.col("split") == "test") & (pl.col("protocol") == "full") & (pl.col("bucket") == bucket)
    )
    rows: list[ClaimRow] = [
        (method, setting, metric, {pair: paired_estimate(chosen, *pair, method, setting, metric) for pair in pairs})
        for method in tag_method_names()
        for setting in ("user", "item")
        for metric in METRICS
    ]
    lines = [
        "| method | setting | metric | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " | verdict |",
        "|---" * (4 + len(pairs)) + "|",
    ]
    decided = []
    for method, setting, metric, cells in rows:
        known = [cell for cell in cells.values() if cell is not None]
        verdict = combined_verdict(cell.verdict for cell in known) if len(known) == len(pairs) else None
        decided.append(verdict)
        mark = "–" if verdict is None else verdict.value
        lines.append(
            f"| {method} | {setting} | {metric} | " + " | ".join(_paired_cell(c) for c in cells.values()) + f" | {mark} |"
        )
    measured = [cell for *_, cells in rows for cell in cells.values() if cell is not None]
    whose = "all users" if bucket == ALL_USERS else f"users whose target is a {bucket} item"
    title = f"{' and '.join(METRICS)} paired differences, test split, full ranking, {whose} ({_users(measured)})"
    legend = (
        "Δ ±SE: the mean over users of m_u(a) − m_u(b) ± sd/√n of those differences (paired: both sources "
        f"ranked the same users); a cell holds when Δ ≥ {SEPARATION_IN_STD_ERRORS:g}·SE, does not hold when "
        f"Δ ≤ −{SEPARATION_IN_STD_ERRORS:g}·SE, and is within noise otherwise"
    )
    table = "\n".join([title, "", *lines, "", legend])
    missing = _missing_inputs(run.results, rows, pairs, hints or {}, bucket)
    if missing:
        return ClaimResult(Verdict.NOT_MEASURED, table, missing)
    return ClaimResult(combined_verdict(decided), table)


def registered_pairs() -> set[Pair]:
    return {(comparison.a, comparison.b) for comparison in registered_paired_comparisons()}


def _missing_inputs(
    results: pl.DataFrame, rows: Sequence[ClaimRow], pairs: Sequence[Pair], hints: Mapping[str, str], bucket: str
) -> str:
    """Why a claim's ``rows`` cannot be decided ("" when every cell was measured): no users
    in the bucket, the sources the run did not evaluate (their hint, else "no <source>
    results"), then the single cells without paired differences."""
    chosen = select(results, bucket=bucket)
    if bucket != ALL_USERS and chosen.is_empty():
        return f"no {bucket} bucket: no test user's target is a {bucket} item"
    evaluated = set(chosen["tag_source"]) if not chosen.is_empty() else set()
    sources = list(dict.fromkeys(source for pair in pairs for source in pair))
    absent = [source for source in sources if source not in evaluated]
    reasons = list(dict.fromkeys(hints.get(source, f"no {source} results") for source in absent))
    gaps = [
        f"{a} − {b} {method} {setting} {metric}"
        for method, setting, metric, cells in rows
        for (a, b), cell in cells.items()
        if cell is None and a not in absent and b not in absent
    ]
    if gaps:
        reasons.append(f"no paired differences for {', '.join(gaps)}")
    return "; ".join(reasons)


def betag_comparison(run: RunResults, rivals: Sequence[str] = ("base", "native"), bucket: str = ALL_USERS) -> ClaimResult:
    """Does BETag beat each rival on H@10 and N@10, by two paired standard errors, for every retrieval
    method and setting (test split, full ranking, the users whose target is in ``bucket``)?"""
    return _claim(run, bucket, [(FULL_BETAG.tag_source, rival) for rival in rivals])


def cold_start_comparison(run: RunResults) -> ClaimResult:
    """BETag against the count-based reference where behavior is scarce: users whose target is
    among the least popular items (the ``cold`` bucket), test split, full ranking."""
    return betag_comparison(run, rivals=("propagated",), bucket="cold")


def new_item_comparison(run: RunResults) -> ClaimResult:
    """BETag against base tags and the count-based reference where there is no behavior at
    all: users whose target is a new item (the ``new`` bucket; the reference holds only the
    item's own base tags there), test split, full ranking."""
    return betag_comparison(run, rivals=("base", "propagated"), bucket=NEW_ITEMS)


def ablation_order(run: RunResults) -> ClaimResult:
    """The poster's Table 3 order on H@10 and N@10: full BETag > without finetuning and > without
    multi-beam, each of those > without both, each step by two paired standard errors (test
    split, full ranking, all users). Not measured unless the run decoded the ablations
    (``--ablations``)."""
    neither = _variant_with(finetuned=False, multi_beam=False).tag_source
    singles = [variant.tag_source for variant in VARIANTS if variant.finetuned != variant.multi_beam]
    pairs = [(FULL_BETAG.tag_source, single) for single in singles] + [(single, neither) for single in singles]
    hints = {variant.tag_source: "run with --ablations" for variant in ABLATIONS}
    return _claim(run, ALL_USERS, pairs, hints)


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
