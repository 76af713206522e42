"""The retrieval methods: name -> how it scores every catalog item for a batch of queries
(library code, no Dagster). The one place their names and display names are written; the
retrieval protocol, the runner's config and the report read them from here.

A method is built once per (tag source, setting, split) over D, the (n_items, n_terms) items'
weighted term frequencies, and then scores chunks of Q, the (n_queries, n_terms) query term
counts. A tag-free method (``uses_tags`` False) is built over no term at all: its queries are
empty, and the protocol's tie rule (train popularity) alone ranks what it scores equal.
A new method is one scorer module plus one line of ``RETRIEVAL_METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import sparse

from dagster_betag.evaluation.birank import BiRank
from dagster_betag.evaluation.bm25 import SparseBM25

if TYPE_CHECKING:
    from dagster_betag.evaluation.retrieval import RetrievalConfig


@dataclass(frozen=True)
class ChunkScores:
    """(n_queries, n_items) scores of one chunk of queries; an iterative scorer also says how
    many updates it ran and whether it converged (None for a closed-form one)."""

    items: np.ndarray
    iterations: int | None = None
    converged: bool | None = None


class Scorer(Protocol):
    def score(self, query_counts: sparse.csr_matrix) -> ChunkScores:
        """Scores of every item for each row of ``query_counts`` (n_queries, n_terms)."""
        ...


@dataclass(frozen=True)
class RetrievalMethod:
    """``build`` makes the scorer from D and the run's RetrievalConfig; ``label`` is its
    name in tables and charts."""

    name: str
    label: str
    uses_tags: bool
    build: Callable[[sparse.csr_matrix, RetrievalConfig], Scorer]


class BM25Scorer:
    """Okapi BM25 of each query against each item's tag document (``bm25.SparseBM25``)."""

    def __init__(self, documents: sparse.csr_matrix, config: RetrievalConfig) -> None:
        self.bm25 = SparseBM25(documents, k1=config.k1, b=config.b, epsilon=config.epsilon)

    def score(self, query_counts: sparse.csr_matrix) -> ChunkScores:
        return ChunkScores(self.bm25.scores(query_counts))


class BiRankScorer:
    """BiRank propagation from the query's terms over the item-term graph whose edge weights
    are D, the matrix BM25 reads (``birank.BiRank``)."""

    def __init__(self, documents: sparse.csr_matrix, config: RetrievalConfig) -> None:
        self.birank = BiRank(documents, alpha=config.alpha, beta=config.beta, tol=config.tol, max_iter=config.max_iter)

    def score(self, query_counts: sparse.csr_matrix) -> ChunkScores:
        result = self.birank.rank(query_counts)
        return ChunkScores(result.items, result.iterations, result.converged)


class PopularScorer:
    """No tag enters: every score is equal, so the tie rule alone ranks, by train popularity
    (the baseline every tag method must beat)."""

    def __init__(self, documents: sparse.csr_matrix, config: RetrievalConfig) -> None:
        self.n_items = documents.shape[0]

    def score(self, query_counts: sparse.csr_matrix) -> ChunkScores:
        return ChunkScores(np.zeros((query_counts.shape[0], self.n_items)))


RETRIEVAL_METHODS: dict[str, RetrievalMethod] = {
    method.name: method
    for method in (
        RetrievalMethod("bm25", "BM25", uses_tags=True, build=BM25Scorer),
        RetrievalMethod("birank", "BiRank", uses_tags=True, build=BiRankScorer),
        RetrievalMethod("popular", "Popular", uses_tags=False, build=PopularScorer),
    )
}


def retrieval_method(name: str) -> RetrievalMethod:
    if name not in RETRIEVAL_METHODS:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(RETRIEVAL_METHODS)}")
    return RETRIEVAL_METHODS[name]


def tag_method_names() -> tuple[str, ...]:
    """The methods that read tags, in registry order (what every tag source is ranked by)."""
    return tuple(name for name, method in RETRIEVAL_METHODS.items() if method.uses_tags)


def baseline_method_names() -> tuple[str, ...]:
    """The tag-free methods, run once per split, setting and protocol (tag source "none")."""
    return tuple(name for name, method in RETRIEVAL_METHODS.items() if not method.uses_tags)
