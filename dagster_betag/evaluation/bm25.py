"""Okapi BM25 as one sparse matrix product, score-for-score equal to ``rank_bm25.BM25Okapi``.

rank_bm25 scores one query at a time with a Python loop over query terms and documents;
here the per-(document, term) BM25 weights are computed once into a sparse matrix W, and a
whole batch of queries is scored as Q @ Wᵀ.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


class SparseBM25:
    """BM25Okapi over a fixed corpus of term-frequency rows.

    score(q, d) = sum_t c_q(t) * idf(t) * f(t, d) (k1 + 1) / (f(t, d) + k1 (1 - b + b |d| / avgdl))
    idf(t)      = ln((N - n_t + 0.5) / (n_t + 0.5)),   replaced by epsilon * mean_t' idf(t') where < 0

    c_q(t): the query's count (weight) of term t; f(t, d): document d's (weighted) frequency
    of t; |d| = sum_t f(t, d); avgdl: the mean |d| over the N documents; n_t: the number of
    documents containing t. In matrix form, with W[d, t] the summand without c_q(t):
    scores = Q @ Wᵀ.

    rank_bm25's quirks, reproduced so that the two agree to rounding:

    - The IDF floor: a term in more than half of the documents has a negative idf, which is
      replaced by epsilon times the *average idf over the vocabulary*, an average taken before
      the replacement and over distinct terms (not weighted by frequency). If that average is
      itself negative (a corpus where most terms are common), the "floor" stays negative. A term
      in exactly half the documents has idf 0 and is not floored.
    - Repeated query terms count once per occurrence (no saturation on the query side), so a
      query "a a" scores twice "a".
    - Query terms absent from the corpus contribute 0; empty documents still count in N and in
      avgdl.

    One deliberate difference: where every document is empty rank_bm25 divides by zero; here
    every score is 0.
    """

    def __init__(self, frequencies: sparse.spmatrix, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> None:
        """``frequencies``: (n_docs, n_terms) f(t, d), e.g. ``TermIndex.matrix(corpus)``."""
        tf = sparse.csr_matrix(frequencies, dtype=np.float64, copy=True)
        tf.sum_duplicates()
        tf.eliminate_zeros()
        n_docs, n_terms = tf.shape
        if n_docs == 0:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b, self.epsilon = k1, b, epsilon
        doc_len = np.asarray(tf.sum(axis=1)).ravel()  # (n_docs,)
        self.avgdl = float(doc_len.mean())

        doc_freq = np.bincount(tf.indices, minlength=n_terms)  # (n_terms,) n_t
        in_corpus = doc_freq > 0  # rank_bm25's idf table holds only terms some document has
        idf = np.zeros(n_terms)
        idf[in_corpus] = np.log(n_docs - doc_freq[in_corpus] + 0.5) - np.log(doc_freq[in_corpus] + 0.5)
        self.average_idf = float(idf[in_corpus].mean()) if in_corpus.any() else 0.0
        idf[idf < 0] = self.epsilon * self.average_idf
        self.idf = idf  # (n_terms,)

        # W[d, t] on the nonzeros of tf; the zeros of tf are zeros of W
        rows = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
        f = tf.data
        norm = k1 * (1 - b + b * doc_len[rows] / self.avgdl) if self.avgdl > 0 else 0.0
        weights = idf[tf.indices] * f * (k1 + 1) / (f + norm)
        self.weights = sparse.csr_matrix((weights, tf.indices, tf.indptr), shape=tf.shape)  # (n_docs, n_terms)

    def scores(self, queries: sparse.spmatrix | np.ndarray) -> np.ndarray:
        """(n_queries, n_docs) BM25 scores of ``queries``: (n_queries, n_terms) term counts c_q."""
        return np.asarray((sparse.csr_matrix(queries, dtype=np.float64) @ self.weights.T).toarray())
