"""One evaluation run: every tag source x method x setting x protocol, as result rows.

The rows are what the ``eval_results`` table holds (one metric value per row, with the
protocol recorded next to it), so runs accumulate and stay comparable in SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from dagster_betag.evaluation.data import (
    SPLITS,
    EvalData,
    EvaluationInputError,
    ItemBeams,
    load_betag_beams,
    load_eval_data,
    load_tag_documents,
    load_tag_sources,
)
from dagster_betag.evaluation.metrics import CUTOFF, METRICS, hit_at, ndcg_at
from dagster_betag.evaluation.recommenders import RECOMMENDERS, recommender_named
from dagster_betag.evaluation.retrieval import (
    PROTOCOLS,
    SETTINGS,
    RetrievalConfig,
    rank_targets,
    sample_candidate_sets,
    summarize_ranks,
)
from dagster_betag.evaluation.retrieval_methods import baseline_method_names, tag_method_names
from dagster_betag.evaluation.sequential import run_seeds
from dagster_betag.evaluation.text_encoder import TextEncoder
from dagster_betag.evaluation.unisrec import item_texts
from dagster_betag.knobs import knob, nested
from dagster_betag.llm.betag import aggregate_beams, inverse_item_frequency
from dagster_betag.llm.variants import FULL_BETAG

Log = Callable[[str], None]

NO_TAGS = "none"  # the tag_source of tag-free methods (popular, SASRec)
ALL_USERS = "all"
NEW_ITEMS = "new"  # the bucket of the new items (new-item protocol)
BUCKETS = ("cold", "mid", "head", NEW_ITEMS)


@dataclass(frozen=True)
class EvaluationConfig:
    """What one run measures.

    ``head_share`` / ``cold_share``: the most / least popular shares of the catalog's non-new
    items by learnable train interactions that define the target-popularity buckets (the rest
    is mid; new items are the bucket ``new``); the bucket rows show where tags help items with
    little or no behavior. ``restrict_to_llm_tagged``: evaluate over the items that were
    base-tagged and, when there are BETags, have them (a quick run tags only the most popular
    ones), so every tag source is compared on the same catalog and users."""

    splits: tuple[str, ...] = knob(("validation", "test"), "Splits to rank (leave-one-out).")
    settings: tuple[str, ...] = knob(
        SETTINGS, "Queries: user (recent history's tags) and/or item (the previous item's tags)."
    )
    protocols: tuple[str, ...] = knob(PROTOCOLS, "full (every catalog item) and/or sampled (target + negatives).")
    retrieval_methods: tuple[str, ...] = knob(
        tag_method_names(), "Tag-based retrieval methods run on every tag source (Popular always runs)."
    )
    head_share: float = knob(0.1, "The most popular share of the non-new items (learnable train interactions): head.")
    cold_share: float = knob(0.5, "The least popular share of the non-new items: the cold bucket.")
    beam_counts: tuple[int, ...] = knob(
        (1, 2, 4, 8, 16, 32, 40), "Fig. 2a: BETags from the first k beams, for those k up to the decoded number."
    )
    top_ks: tuple[int, ...] = knob(
        (10, 15, 30), 'BETags re-aggregated from every beam keeping the top k tags ("betag:top<k>", full ranking).'
    )
    weighted_betags: bool = knob(
        True, 'Also "betag:weighted": each tag weighted by the beams that wrote it (BM25 term frequencies, BiRank edges).'
    )
    # a finetuned small model writes its favourite tags for every item; they match every
    # document and crowd the top-K
    generic_tag_share: float | None = knob(
        0.1, '"betag:specific": generated tags on more than this share of the items dropped (null: not measured).'
    )
    idf_betags: bool = knob(
        True,
        'Also "betag:idf": tags ranked by beams x idf, idf = ln(N items / items whose generated beams hold the tag) '
        "(the betag_aggregation: idf of marts.item_betags).",
    )
    recommenders: tuple[str, ...] = knob(tuple(RECOMMENDERS), "Recommenders trained per seed (test split only).")
    unisrec_sources: tuple[str, ...] = knob(
        ("native", "base", "betag", "propagated"), "Tag sources whose item texts UniSRec is trained on, one run each."
    )
    seeds: tuple[int, ...] = knob((0, 1, 2), "Recommender training seeds (test split only).")
    recommender_max_epochs: int = knob(10, "Most training epochs of the sequential recommenders.")
    restrict_to_llm_tagged: bool = knob(
        True, "Evaluate over the items with base tags (and BETags where there are), not the whole k-core."
    )
    retrieval: RetrievalConfig = nested(RetrievalConfig, "Tokenization, BM25/BiRank parameters, sampled protocol.")


@dataclass(frozen=True)
class ResultRow:
    split: str
    protocol: str
    setting: str
    method: str
    tag_source: str
    bucket: str
    metric: str
    value: float
    std_error: float
    n_users: int
    n_candidates: int
    seed: int


def popularity_buckets(data: EvalData, head_share: float, cold_share: float) -> np.ndarray:
    """(n_items,) bucket name of each item: ``new`` for the new items; of the m others,
    ``head`` for the round(``head_share`` m) most popular by learnable train interactions,
    ``cold`` for the round(``cold_share`` m) least popular, else ``mid`` (ties by catalog
    order, so the buckets partition the catalog exactly)."""
    is_new = data.is_new()
    learnable = np.flatnonzero(~is_new)  # (m,) item indices
    order = learnable[np.argsort(-data.train_popularity()[learnable], kind="stable")]  # most popular first
    buckets = np.full(data.n_items, "mid", dtype=object)
    buckets[is_new] = NEW_ITEMS
    n_head = int(round(head_share * len(learnable)))
    n_cold = int(round(cold_share * len(learnable)))
    buckets[order[:n_head]] = "head"
    buckets[order[len(learnable) - n_cold :]] = "cold"
    return buckets


@dataclass
class EvaluationRows:
    """What rankings yield: the aggregated ``results`` and the per-user metric rows they
    average (``user_metrics``, frames of one row per user: the ``eval_user_metrics`` table)."""

    results: list[ResultRow] = field(default_factory=list)
    user_metrics: list[pl.DataFrame] = field(default_factory=list)

    def extend(self, other: EvaluationRows) -> None:
        self.results += other.results
        self.user_metrics += other.user_metrics

    def user_metrics_frame(self) -> pl.DataFrame:
        return pl.concat(self.user_metrics) if self.user_metrics else pl.DataFrame()


def rank_rows(
    ranks: np.ndarray,
    targets: np.ndarray,
    buckets: np.ndarray,
    user_ids: Sequence[str],
    *,
    split: str,
    protocol: str,
    setting: str,
    method: str,
    tag_source: str,
    n_candidates: int,
    seed: int,
) -> EvaluationRows:
    """H@10 and N@10 rows over all users and per bucket of the target's popularity, and one
    row per user (``user_ids`` aligned with ``ranks``) with its target's bucket, rank, hit@10
    and ndcg@10: the values those rows average, kept so that two tag sources can be compared
    user by user (``marts.eval_paired_differences``)."""
    rows = []
    target_buckets = buckets[targets]
    for bucket in (ALL_USERS, *BUCKETS):
        chosen = ranks if bucket == ALL_USERS else ranks[target_buckets == bucket]
        if chosen.size == 0:
            continue
        summary = summarize_ranks(chosen, CUTOFF)
        for metric in METRICS:
            rows.append(
                ResultRow(
                    split, protocol, setting, method, tag_source, bucket, metric,
                    float(summary[metric]), float(summary[f"{metric}_se"]), int(chosen.size), n_candidates, seed,
                )
            )  # fmt: skip
    users = pl.DataFrame(
        {
            "user_id": list(user_ids),
            "bucket": target_buckets.astype(str),
            "target_rank": ranks.astype(np.int64),
            f"hit_at_{CUTOFF}": [hit_at(int(rank), CUTOFF) for rank in ranks],
            f"ndcg_at_{CUTOFF}": [ndcg_at(int(rank), CUTOFF) for rank in ranks],
        },
        schema_overrides={"bucket": pl.String},
    ).with_columns(
        pl.lit(split).alias("split"),
        pl.lit(protocol).alias("protocol"),
        pl.lit(setting).alias("setting"),
        pl.lit(method).alias("method"),
        pl.lit(tag_source).alias("tag_source"),
        pl.lit(seed, dtype=pl.Int64).alias("seed"),
    )
    return EvaluationRows(rows, [users])


def evaluate_retrieval(
    data: EvalData,
    documents_by_source: Mapping[str, Mapping[str, Sequence]],
    config: EvaluationConfig,
    log: Log,
    *,
    baselines: bool = True,
) -> EvaluationRows:
    """The tag-free methods (Popular) once unless not ``baselines``, then every retrieval method
    on every tag source, for each split, setting and protocol; the sampled candidate sets are
    drawn once per split and shared."""
    buckets = popularity_buckets(data, config.head_share, config.cold_share)
    rows = EvaluationRows()
    for split in config.splits:
        user_ids = [user.user_id for user in data.split_users(split)]
        candidate_sets = sample_candidate_sets(data, split, config.retrieval)
        for protocol in config.protocols:
            sets = candidate_sets if protocol == "sampled" else None
            runs = [(method, NO_TAGS, None) for method in (baseline_method_names() if baselines else ())] + [
                (method, source, documents)
                for source, documents in documents_by_source.items()
                for method in config.retrieval_methods
            ]
            for setting in config.settings:
                for method, source, documents in runs:
                    started = time.perf_counter()
                    result = rank_targets(data, documents, method, setting, split, protocol, config.retrieval, sets)
                    rows.extend(rank_rows(
                        result.ranks, result.targets, buckets, user_ids,
                        split=split, protocol=protocol, setting=setting, method=method, tag_source=source,
                        n_candidates=result.n_candidates, seed=config.retrieval.seed,
                    ))  # fmt: skip
                    log(
                        f"{split}/{protocol}/{setting} {method} on {source}: "
                        f"N@10 {summarize_ranks(result.ranks)['N@10']:.4f} ({time.perf_counter() - started:.1f} s)"
                    )
    return rows


def beam_prefix_documents(
    beams_by_item: Mapping[str, ItemBeams],
    n_generated: int,
    top_k: int,
    *,
    weighted: bool = False,
    tag_weight: Callable[[str], float] | None = None,
) -> dict:
    """BETag documents from only the first ``n_generated`` generated beams of each item (plus
    the base-tag beam when the generation kept it): the poster's Fig. 2a without decoding
    again. Group g of the diverse search depends only on groups before it, so with one beam
    per group the first k beams are exactly what a k-group run decodes. ``weighted``: each tag
    as a (tag, beams that wrote it) pair, the weight retrieval multiplies its terms by.
    ``tag_weight``: the ranking's tag weight (``aggregate_beams``)."""
    return {
        item_id: [
            (tag.tag, float(tag.n_beams)) if weighted else tag.tag
            for tag in aggregate_beams([*beams.base, *beams.generated[:n_generated]], top_k, tag_weight)
        ]
        for item_id, beams in beams_by_item.items()
    }


def betag_variant_documents(
    beams_by_item: Mapping[str, ItemBeams], top_k: int, config: EvaluationConfig
) -> dict[str, dict]:
    """Tag source name -> documents of each aggregation lever (top-K, tag weights) over all
    the decoded beams; ``top_k`` is the generation's own (what the plain "betag" source holds)."""
    decoded = max((len(b.generated) for b in beams_by_item.values()), default=0)
    variants = {f"betag:top{k}": beam_prefix_documents(beams_by_item, decoded, k) for k in config.top_ks}
    if config.weighted_betags:
        variants["betag:weighted"] = beam_prefix_documents(beams_by_item, decoded, top_k, weighted=True)
    if config.generic_tag_share is not None:
        generic = generic_tags(beams_by_item, config.generic_tag_share)
        specific = {
            item_id: ItemBeams(beams.base, tuple(tuple(t for t in b if t not in generic) for b in beams.generated))
            for item_id, beams in beams_by_item.items()
        }
        variants["betag:specific"] = beam_prefix_documents(specific, decoded, top_k)
    if config.idf_betags:
        idf = inverse_item_frequency(generated_item_counts(beams_by_item), len(beams_by_item))
        variants["betag:idf"] = beam_prefix_documents(beams_by_item, decoded, top_k, tag_weight=idf)
    return variants


def generated_item_counts(beams_by_item: Mapping[str, ItemBeams]) -> dict[str, int]:
    """tag -> the items whose generated beams hold it."""
    counts: dict[str, int] = {}
    for beams in beams_by_item.values():
        for tag in {tag for beam in beams.generated for tag in beam}:
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def generic_tags(beams_by_item: Mapping[str, ItemBeams], max_share: float) -> set[str]:
    """Tags the generated beams of more than ``max_share`` of the items write."""
    counts = generated_item_counts(beams_by_item)
    return {tag for tag, n in counts.items() if n > max_share * len(beams_by_item)}


def protocol_record(config: EvaluationConfig, data: EvalData) -> dict:
    """The settings a result depends on, stored with every run."""
    return {**asdict(config), "n_items": data.n_items, "n_users": len(data.users)}


def split_user_counts(data: EvalData) -> dict[str, int]:
    """``n_<split>_users``: how many users each split ranks."""
    return {f"n_{split}_users": len(data.split_users(split)) for split in SPLITS}


@dataclass
class Evaluation:
    rows: list[ResultRow]
    user_metrics: pl.DataFrame  # one row per user and ranking (rank_rows), what the rows average
    data: EvalData
    sources: list[str]
    beam_counts: list[int]


def evaluate_warehouse(database_path: Path, config: EvaluationConfig, log: Log) -> Evaluation:
    """Every tag source of the warehouse under every configured method, setting and protocol,
    plus the beam-count curve of the BETags (test split, full ranking)."""
    data = load_eval_data(database_path)
    sources = load_tag_sources(database_path)
    documents = {source: load_tag_documents(database_path, source) for source in sources}
    if config.restrict_to_llm_tagged:
        data = data.restrict_to(llm_tagged_items(data, documents))
    counts = split_user_counts(data)
    if not all(counts[f"n_{split}_users"] for split in config.splits):
        raise EvaluationInputError(
            f"a split has no user with its target and an item before it in the evaluation catalog ({counts})"
        )
    users = ", ".join(f"{n} {name.removeprefix('n_').removesuffix('_users')}" for name, n in counts.items())
    log(f"evaluating {len(sources)} tag sources on {data.n_items} items; users per split: {users}")
    rows = evaluate_retrieval(data, documents, config, log)
    beam_counts: list[int] = []
    if FULL_BETAG.tag_source in sources:
        beams = load_betag_beams(database_path)
        decoded = max((len(b.generated) for b in beams.values()), default=0)
        top_k = max(len(tags) for tags in documents[FULL_BETAG.tag_source].values())
        beam_counts = [k for k in config.beam_counts if k < decoded] + [decoded]
        curve = replace(config, protocols=("full",))
        for k in beam_counts:
            prefix = {f"betag:{k}_beams": beam_prefix_documents(beams, k, top_k)}
            rows.extend(evaluate_retrieval(data, prefix, curve, log, baselines=False))
        levers = replace(config, protocols=("full",))
        variants = betag_variant_documents(beams, top_k, config)
        rows.extend(evaluate_retrieval(data, variants, levers, log, baselines=False))
    if config.recommenders:
        rows.extend(evaluate_recommenders(data, documents, config, log))
    return Evaluation(rows.results, rows.user_metrics_frame(), data, sources, beam_counts)


def llm_tagged_items(data: EvalData, documents: Mapping[str, Mapping[str, Sequence]]) -> list[str]:
    """The catalog items with a base-tag generation (even if the tag vocabulary dropped all its
    tags) and, where the warehouse has BETags, with BETags."""
    required = [source for source in (FULL_BETAG.tag_source,) if source in documents]
    generated = [source for source in ("base_raw", "base") if source in documents][:1]
    return [
        item_id
        for item_id in data.item_ids
        if all(documents[source].get(item_id) for source in generated + required)
    ]


def evaluate_recommenders(
    data: EvalData, documents_by_source: Mapping[str, Mapping[str, Sequence[str]]], config: EvaluationConfig, log: Log
) -> EvaluationRows:
    """Each recommender, once per seed, trained on every user's learnable train sequence and
    ranked on the test split's users in every setting and protocol (the sampled candidates are
    those of the retrieval rows)."""
    if not any(len(data.learnable_train(user)) >= 2 for user in data.users):
        log("recommenders skipped: no user has two train items in the evaluation catalog to learn from")
        return EvaluationRows()
    buckets = popularity_buckets(data, config.head_share, config.cold_share)
    protocols = {
        protocol: (sample_candidate_sets(data, "test", config.retrieval) if protocol == "sampled" else None)
        for protocol in config.protocols
    }
    runs: list[tuple[str, str, np.ndarray | None]] = []
    for kind in config.recommenders:
        if not recommender_named(kind).uses_text:
            runs.append((kind, NO_TAGS, None))
            continue
        encoder = TextEncoder()
        for source in (s for s in config.unisrec_sources if s in documents_by_source):
            runs.append((kind, source, encoder.encode(item_texts(data.item_ids, documents_by_source[source]))))
    rows = EvaluationRows()
    test_users = data.split_users("test")
    targets = data.indices([user.test for user in test_users])
    user_ids = [user.user_id for user in test_users]
    for kind, source, text in runs:
        model_config = recommender_named(kind).config(config.recommender_max_epochs)
        seed_runs = run_seeds(data, kind, protocols, "test", text, config.seeds, model_config, log, config.settings)
        for run in seed_runs:
            for (setting, protocol), ranks in run.ranks.items():
                rows.extend(rank_rows(
                    ranks, targets, buckets, user_ids,
                    split="test", protocol=protocol, setting=setting, method=kind, tag_source=source,
                    n_candidates=data.n_items if protocol == "full" else max(len(c) for c in protocols[protocol]),
                    seed=run.seed,
                ))  # fmt: skip
        log(f"{kind} on {source}: {len(seed_runs)} seed(s) done")
    return rows
