"""SparseBM25 against rank_bm25.BM25Okapi, and the tokenization feeding it."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from dagster_betag.evaluation.bm25 import SparseBM25
from dagster_betag.evaluation.tokenize import TermIndex, tokenize


def _sparse_scores(corpus, queries, **params):
    terms = TermIndex.from_term_lists(corpus)
    return SparseBM25(terms.matrix(corpus), **params).scores(terms.matrix(queries))


def _reference_scores(corpus, queries, **params):
    bm25 = BM25Okapi(corpus, **params)
    return np.array([bm25.get_scores(query) for query in queries])


@pytest.fixture
def movielens_corpus(ml_latest_small) -> list[list[str]]:
    """300 MovieLens movies as word-tokenized tag documents (user tags plus genres), 200 of
    them dramas, so that "drama" is in more than half the documents (a negative idf)."""
    folder = ml_latest_small
    tags: dict[str, list[str]] = defaultdict(list)
    with open(folder / "tags.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            tags[row["movieId"]].append(row["tag"])
    dramas, others = [], []
    with open(folder / "movies.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["movieId"] in tags:
                document = tags[row["movieId"]] + row["genres"].split("|")
                (dramas if "Drama" in row["genres"] else others).append(document)
    return [[term for term, _ in tokenize(document, "words")] for document in dramas[:200] + others[:100]]


@pytest.fixture
def movielens_queries(movielens_corpus) -> list[list[str]]:
    rng = np.random.default_rng(7)
    vocabulary = sorted({term for document in movielens_corpus for term in document})
    queries = []
    for i in range(50):
        query = list(rng.choice(vocabulary, size=1 + i % 6))
        if i % 3 == 0:
            query += query[:2]  # repeated terms
        if i % 4 == 0:
            query.append("zzz-not-a-tag")  # unknown term
        if i % 5 == 0:
            query.append("drama")  # in more than half the corpus
        queries.append(query)
    queries.append([])
    return queries


def test_the_sample_exercises_the_idf_floor(movielens_corpus):
    n_drama = sum("drama" in document for document in movielens_corpus)
    assert len(movielens_corpus) == 300 and n_drama > 150


@pytest.mark.parametrize("params", [{}, {"k1": 0.9, "b": 0.4, "epsilon": 0.5}])
def test_equals_rank_bm25_on_movielens_tags(movielens_corpus, movielens_queries, params):
    ours = _sparse_scores(movielens_corpus, movielens_queries, **params)
    reference = _reference_scores(movielens_corpus, movielens_queries, **params)
    assert ours.shape == (len(movielens_queries), len(movielens_corpus))
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)
    assert np.count_nonzero(reference) > 1000  # the comparison is not between zeros


@pytest.mark.parametrize(
    "corpus",
    [
        # "a" in 3 of 4 documents: idf ln(1.5/3.5) < 0, floored at 0.25 * mean idf > 0
        [["a", "b"], ["a", "c"], ["a", "d"], ["e"]],
        # mostly common terms: the mean idf is negative, so the floor is negative too
        [["a", "b"], ["a", "b"], ["a", "c"]],
        # a term in exactly half the documents: idf 0, not floored
        [["a"], ["b", "b"]],
        # an empty document still counts in N and avgdl
        [["a", "b"], [], ["b"]],
    ],
)
def test_equals_rank_bm25_on_idf_edge_cases(corpus):
    queries = [["a"], ["b", "b", "a"], ["c", "zzz"], ["e", "d", "a", "a"]]
    np.testing.assert_allclose(_sparse_scores(corpus, queries), _reference_scores(corpus, queries), atol=1e-12)


def test_idf_floor_by_hand():
    corpus = [["a", "b"], ["a", "c"], ["a", "d"], ["e"]]
    terms = TermIndex.from_term_lists(corpus)
    bm25 = SparseBM25(terms.matrix(corpus))
    rare = math.log(3.5 / 1.5)  # b, c, d, e: in 1 of 4 documents
    assert bm25.average_idf == pytest.approx((4 * rare - rare) / 5)  # "a": ln(1.5/3.5) = -rare
    assert bm25.idf[terms.vocabulary["a"]] == pytest.approx(0.25 * 3 * rare / 5)
    assert bm25.idf[terms.vocabulary["b"]] == pytest.approx(rare)
    # document 0 for the query "b": idf * f (k1 + 1) / (f + k1 (1 - b + b |d| / avgdl)), avgdl = 7/4
    expected = rare * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2 / 1.75))
    assert _sparse_scores(corpus, [["b"]])[0, 0] == pytest.approx(expected)


def test_corpus_without_terms_scores_zero():
    scores = _sparse_scores([[], []], [["a"]])
    assert np.array_equal(scores, np.zeros((1, 2)))


def test_a_tag_weight_acts_as_a_term_count():
    weighted = [[("a", 2.0), "b"], ["a", "c"], ["c"]]
    repeated = [["a", "a", "b"], ["a", "c"], ["c"]]
    queries = [["a"], [("c", 3.0)], ["b", "c", "c", "c"]]
    np.testing.assert_allclose(_sparse_scores(weighted, queries), _sparse_scores(repeated, queries), atol=1e-12)
    unit_queries = [["a"], ["c"] * 3, queries[2]]
    np.testing.assert_allclose(_sparse_scores(weighted, queries), _reference_scores(repeated, unit_queries))


def test_tokenization_modes():
    document = ["Dark  Comedy", ("time travel", 0.5), "sci-fi", " "]
    assert tokenize(document, "tag") == [("dark comedy", 1.0), ("time travel", 0.5), ("sci-fi", 1.0)]
    assert tokenize(document, "words") == [
        ("dark", 1.0), ("comedy", 1.0), ("time", 0.5), ("travel", 0.5), ("sci-fi", 1.0),
    ]  # fmt: skip
    assert tokenize(document, "both") == [
        ("#dark comedy", 1.0), ("dark", 1.0), ("comedy", 1.0),
        ("#time travel", 0.5), ("time", 0.5), ("travel", 0.5),
        ("#sci-fi", 1.0), ("sci-fi", 1.0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="tokenization"):
        tokenize(document, "letters")


def test_term_matrix_sums_weights_and_drops_unknown_terms():
    terms = TermIndex(["a", "b"])
    matrix = terms.matrix([["a", ("a", 0.5), "zzz"], [("b", 0.0)], []]).toarray()
    assert np.array_equal(matrix, [[1.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="non-negative"):
        terms.matrix([[("a", -1.0)]])
