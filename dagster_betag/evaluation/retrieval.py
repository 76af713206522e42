"""Tag-based retrieval: can an item's tags find the item a user consumes next?

For every user and split, a query is built from the tags of items the user consumed
*before* the target, every catalog item is scored against it, and the rank of the target is
recorded. The protocol is shared by every method and tag source:

- settings: ``"user"``, the query is the tags of the user's most recent ``max_history_items``
  history items (``user.history(split)``); ``"item"``, the tags of the single item right before
  the target (``user.history(split)[-1]``). The target's own tags never enter the query.
- methods: those of ``retrieval_methods.RETRIEVAL_METHODS``: ``"bm25"`` (Okapi BM25 of the
  query against each item's tag document), ``"birank"`` (BiRank propagation from the query's
  terms over the item-term graph whose edge weights are the items' term frequencies, the same
  matrix BM25 reads) and ``"popular"`` (train popularity alone, no tags: the baseline every tag
  method must beat).
- masking: the user's whole split history is never ranked, in both settings and for every
  method (so "item" differs from "user" only in its query); the target is never masked.
- ties: equal tag scores are ordered by train popularity, more popular first, and only what
  is still tied after that is broken pessimistically for the target (``target_rank``). The
  popularity order only ever reorders items with equal tag scores, never distinct ones, so an
  empty query (no tagged history) ranks by popularity: a defined ranking, not an arbitrary one.
- protocols: ``"full"``, every catalog item is a candidate; ``"sampled"``, the target plus
  ``n_negatives`` items drawn uniformly from the items outside the user's history, with one
  ``default_rng(seed)`` drawn per user in user order, so every method and tag source sees the
  same candidate sets for a seed (``sample_candidate_sets`` builds them once for reuse).

Queries of a split are built at once as Q = H @ D (H: which history items form each query,
D: the items' term frequencies) and scored in chunks, so a full evaluation takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.metrics import CUTOFF, hit_at, ndcg_at, sampled_candidates, target_rank
from dagster_betag.evaluation.retrieval_methods import ChunkScores, RetrievalMethod, retrieval_method
from dagster_betag.evaluation.tokenize import DEFAULT_TOKENIZATION, Tag, TermIndex, tokenize
from dagster_betag.knobs import knob

SETTINGS = ("user", "item")
PROTOCOLS = ("full", "sampled")

Documents = Mapping[str, Sequence[Tag]]


@dataclass(frozen=True)
class RetrievalConfig:
    """Tokenization and method parameters, and the protocol's knobs.

    ``max_history_items``: the user setting queries with the most recent 50 history items
    (None: all). Recent items say most about what comes next, and a cap keeps heavy users'
    queries (MovieLens histories reach thousands of items) from matching nearly every tag,
    which would turn their ranking into a popularity ranking in disguise.
    """

    tokenization: str = knob(DEFAULT_TOKENIZATION, "How tags become terms: whole tags, their words, or both.")
    k1: float = knob(1.5, "BM25 term-frequency saturation k1 (rank_bm25's default).")
    b: float = knob(0.75, "BM25 document-length normalization b (rank_bm25's default).")
    epsilon: float = knob(0.25, "BM25 IDF floor: negative IDFs become epsilon x the mean IDF (rank_bm25's default).")
    alpha: float = knob(0.85, "BiRank damping of the item -> term hop.")
    beta: float = knob(0.85, "BiRank damping of the term -> item hop.")
    tol: float = knob(1e-8, "BiRank stops once no score changes by more than this.")
    max_iter: int = knob(200, "BiRank's most updates per chunk of queries.")
    max_history_items: int | None = knob(
        50, "User-setting queries use the most recent this many history items (null: the whole history)."
    )
    n_negatives: int = knob(99, "Sampled protocol: random non-interacted items ranked with the target.")
    seed: int = knob(0, "Seed of the sampled protocol's candidate sets.")
    chunk_size: int = knob(256, "Queries scored at once: bounds the dense (chunk, n_items) score block.")

    def __post_init__(self) -> None:
        if self.max_history_items is not None and self.max_history_items < 1:
            raise ValueError("max_history_items must be at least 1 (None: the whole history)")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")


@dataclass(frozen=True)
class Queries:
    """Every user's query of one setting and split, over the catalog's term vocabulary."""

    terms: TermIndex
    documents: sparse.csr_matrix  # (n_items, n_terms) D, the items' weighted term frequencies
    counts: sparse.csr_matrix  # (n_users, n_terms) Q = H @ D, each query's term counts

    def query(self, user: int) -> dict[str, float]:
        """The terms of the ``user``-th query (position in ``data.split_users(split)``) and their counts."""
        row = self.counts.getrow(user)
        return {self.terms.terms[t]: float(c) for t, c in zip(row.indices, row.data, strict=True)}


@dataclass(frozen=True)
class RankResult:
    """Per-user target ranks (aligned with ``data.split_users(split)``), for means, errors and buckets."""

    ranks: np.ndarray  # (n_users,) int64, 1-indexed
    targets: np.ndarray  # (n_users,) int64 catalog index of each target (for popularity buckets)
    n_candidates: int  # the catalog size, or the largest sampled candidate set
    empty_query_share: float  # users whose query has no term, ranked by popularity alone (1 for "popular")
    mean_query_terms: float  # distinct terms per query
    iterations: int | None = None  # BiRank: the most updates any chunk needed
    converged: bool | None = None  # BiRank: every chunk reached tol

    @property
    def n_users(self) -> int:
        return int(self.ranks.size)


def build_queries(data: EvalData, documents: Documents, setting: str, split: str, config: RetrievalConfig) -> Queries:
    """Q = H @ D: H[u, i] counts item i among user u's query items (setting), D holds the
    catalog items' tokenized documents (an item missing from ``documents`` has none)."""
    term_lists = [tokenize(documents.get(item_id, ()), config.tokenization) for item_id in data.item_ids]
    terms = TermIndex.from_term_lists(term_lists)
    item_terms = terms.matrix(term_lists)
    history = _query_items(data, setting, split, config.max_history_items)
    return Queries(terms, item_terms, sparse.csr_matrix(history @ item_terms))


def sample_candidate_sets(data: EvalData, split: str, config: RetrievalConfig) -> tuple[np.ndarray, ...]:
    """Per user of the split (``data.split_users(split)`` order) the target's index first, then ``n_negatives`` items
    outside the user's split history, from one ``default_rng(seed)`` drawn in user order."""
    rng = np.random.default_rng(config.seed)
    return tuple(
        sampled_candidates(
            data.n_items, data.index[user.target(split)], data.indices(user.history(split)), config.n_negatives, rng
        )
        for user in data.split_users(split)
    )


def rank_targets(
    data: EvalData,
    documents: Documents | None,
    method: str,
    setting: str = "user",
    split: str = "test",
    protocol: str = "full",
    config: RetrievalConfig = RetrievalConfig(),
    candidate_sets: Sequence[np.ndarray] | None = None,
) -> RankResult:
    """The rank of every user's ``split`` target under ``method``; ``documents`` (item_id ->
    tags) may be None for a tag-free method (``"popular"``). ``candidate_sets`` (sampled protocol
    only) reuses sets from ``sample_candidate_sets``; by default they are drawn from ``config.seed``."""
    scoring = retrieval_method(method)
    _check(setting, SETTINGS, "setting")
    _check(protocol, PROTOCOLS, "protocol")
    users = data.split_users(split)
    if not users:
        raise ValueError(f"no users to evaluate on the {split} split")
    if protocol == "full" and candidate_sets is not None:
        raise ValueError("candidate_sets belong to the sampled protocol")
    if protocol == "sampled" and candidate_sets is None:
        candidate_sets = sample_candidate_sets(data, split, config)
    if candidate_sets is not None and len(candidate_sets) != len(users):
        raise ValueError(f"{len(candidate_sets)} candidate sets for {len(users)} users")
    if scoring.uses_tags and documents is None:
        raise ValueError(f"method {method!r} needs tag documents")

    targets = np.array([data.index[user.target(split)] for user in users], dtype=np.int64)
    histories = [data.indices(user.history(split)) for user in users]
    popularity = data.train_popularity()
    # a tag-free method sees no tag: every item's document, and so every query, is empty
    queries = build_queries(data, documents if scoring.uses_tags else {}, setting, split, config)

    ranks = np.empty(len(users), dtype=np.int64)
    iterative_runs: list[ChunkScores] = []
    for start, scores in _chunk_scores(queries, scoring, config):
        if scores.iterations is not None:
            iterative_runs.append(scores)
        keys = tie_broken_keys(scores.items, popularity)  # (chunk, n_items)
        for user in range(start, start + len(keys)):
            candidates = None if candidate_sets is None else candidate_sets[user]
            ranks[user] = target_rank(keys[user - start], targets[user], masked=histories[user], candidates=candidates)

    terms_per_query = queries.counts.getnnz(axis=1)
    return RankResult(
        ranks=ranks,
        targets=targets,
        n_candidates=data.n_items if candidate_sets is None else max(len(c) for c in candidate_sets),
        empty_query_share=float(np.mean(terms_per_query == 0)),
        mean_query_terms=float(np.mean(terms_per_query)),
        iterations=max(run.iterations for run in iterative_runs) if iterative_runs else None,
        converged=all(run.converged for run in iterative_runs) if iterative_runs else None,
    )


def tie_broken_keys(scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """(n_queries, n_items) int64 keys ordering items by (score, popularity) lexicographically.

    key_i = dense_rank_row(s_i) * L + dense_rank(pop_i),   L = number of distinct popularities

    so key_i > key_j iff s_i > s_j, or s_i = s_j and pop_i > pop_j; equal keys only for equal
    scores and equal popularity. Exact integer ranks rather than s + ε·pop: no ε is small
    enough for every score scale, and a too-large one would reorder distinct scores. NaN
    scores count as -inf, as in ``target_rank``.
    """
    scores = np.nan_to_num(np.atleast_2d(np.asarray(scores, dtype=np.float64)), nan=-np.inf)
    levels, popularity_rank = np.unique(popularity, return_inverse=True)
    return _dense_ranks(scores) * len(levels) + popularity_rank.reshape(1, -1)


def summarize_ranks(ranks: np.ndarray, cutoff: int = CUTOFF) -> dict[str, float]:
    """Means of H@k and N@k over users with their standard errors, se = sd / sqrt(n) with the
    sample standard deviation (ddof = 1; NaN for a single user)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to summarize")
    summary: dict[str, float] = {"n": float(ranks.size)}
    for name, metric in (("H", hit_at), ("N", ndcg_at)):
        values = np.array([metric(int(r), cutoff) for r in ranks])
        summary[f"{name}@{cutoff}"] = float(values.mean())
        error = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
        summary[f"{name}@{cutoff}_se"] = float(error)
    return summary


def _chunk_scores(
    queries: Queries, method: RetrievalMethod, config: RetrievalConfig
) -> Iterator[tuple[int, ChunkScores]]:
    """(first user, its chunk's scores) per chunk of ``chunk_size`` users."""
    scorer = method.build(queries.documents, config)
    n_users = queries.counts.shape[0]
    for start in range(0, n_users, config.chunk_size):
        yield start, scorer.score(queries.counts[start : min(start + config.chunk_size, n_users)])


def _query_items(data: EvalData, setting: str, split: str, max_history_items: int | None) -> sparse.csr_matrix:
    """(n_users, n_items) H: how often each item is among a user's query items (the users of
    ``split``)."""
    users = data.split_users(split)
    rows: list[int] = []
    columns: list[int] = []
    for row, user in enumerate(users):
        history = user.history(split)
        if setting == "item":
            items = history[-1:]
        else:
            items = history if max_history_items is None else history[max(0, len(history) - max_history_items) :]
        rows.extend([row] * len(items))
        columns.extend(data.index[i] for i in items)
    ones = np.ones(len(rows))
    return sparse.coo_matrix((ones, (rows, columns)), shape=(len(users), data.n_items)).tocsr()


def _dense_ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise dense ranks: 0 for each row's smallest value, +1 per larger distinct value."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    steps = np.zeros(values.shape, dtype=np.int64)
    steps[:, 1:] = np.cumsum(ordered[:, 1:] != ordered[:, :-1], axis=1)
    ranks = np.empty_like(steps)
    np.put_along_axis(ranks, order, steps, axis=1)
    return ranks


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
