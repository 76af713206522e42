"""The retrieval protocol: queries, masking, the popularity tie rule, candidate sets, and the
vectorized ranks against a per-user reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagster_betag.evaluation.als import interaction_matrix
from dagster_betag.evaluation.bm25 import SparseBM25
from dagster_betag.evaluation.data import EvalData, UserSequence
from dagster_betag.evaluation.retrieval import (
    RetrievalConfig,
    build_queries,
    rank_targets,
    sample_candidate_sets,
    tie_broken_keys,
)
from dagster_betag.evaluation.retrieval_methods import RETRIEVAL_METHODS
from dagster_betag.evaluation.sasrec import history_batch
from dagster_betag.evaluation.tokenize import TermIndex, tokenize

DOCUMENTS = {
    "a": ["romance"],
    "b": ["western"],
    "c": ["space opera", "robots"],
    "d": ["robots", "space opera", "aliens"],
    "e": ["romance", "paris"],
    "g": ["robots"],
    # "f" has no document
}
# train popularity: a 3, e 3, g 2, b 1, c d f 0
DATA = EvalData(
    item_ids=("a", "b", "c", "d", "e", "f", "g"),
    users=(
        UserSequence("u1", ("a", "b"), "c", "d"),
        UserSequence("u2", ("e", "a", "g"), "b", "c"),
        UserSequence("u3", ("a", "e"), "f", "g"),
        UserSequence("u4", ("g", "e"), "a", "b"),
    ),
)
SPACE_ROBOTS = {"#space opera": 1.0, "space": 1.0, "opera": 1.0, "#robots": 1.0, "robots": 1.0}


def test_item_query_is_the_previous_items_tags():
    queries = build_queries(DATA, DOCUMENTS, "item", "test", RetrievalConfig())
    assert queries.query(0) == SPACE_ROBOTS  # u1: the item before its test target d is c
    assert queries.query(2) == {}  # u3: f has no document


def test_user_query_sums_the_recent_history():
    config = RetrievalConfig(max_history_items=2)
    recent = build_queries(DATA, DOCUMENTS, "user", "test", config).query(0)
    assert recent == {"#western": 1.0, "western": 1.0, **SPACE_ROBOTS}
    # u2's test history e, a, g, b: "romance" comes from both e and a
    full = build_queries(DATA, DOCUMENTS, "user", "test", RetrievalConfig()).query(1)
    assert full["#romance"] == 2.0 and full["paris"] == 1.0 and full["robots"] == 1.0
    one = build_queries(DATA, DOCUMENTS, "user", "test", RetrievalConfig(max_history_items=1)).counts
    item = build_queries(DATA, DOCUMENTS, "item", "test", RetrievalConfig()).counts
    assert one.toarray().tolist() == item.toarray().tolist()


@pytest.mark.parametrize("setting", ["user", "item"])
def test_the_targets_own_document_never_enters_its_query(setting):
    changed = {**DOCUMENTS, "c": ["zebra", "robots"]}  # c: u1's validation target, in its test history
    before = build_queries(DATA, DOCUMENTS, setting, "validation", RetrievalConfig())
    after = build_queries(DATA, changed, setting, "validation", RetrievalConfig())
    assert before.query(0) == after.query(0)
    # the same change does reach the test query, where c is history: the check can see a change
    test_before = build_queries(DATA, DOCUMENTS, setting, "test", RetrievalConfig())
    test_after = build_queries(DATA, changed, setting, "test", RetrievalConfig())
    assert test_before.query(0) != test_after.query(0)


@pytest.mark.parametrize("method", ["bm25", "birank"])
def test_tags_find_the_next_item_past_a_masked_history(method):
    # u1 (test): the query is c's tags; d shares all of them, g one; c itself would score
    # higher than d (the same tags, a shorter document) but is history, so masked
    result = rank_targets(DATA, DOCUMENTS, method, "item", "test")
    assert result.ranks[0] == 1
    queries = build_queries(DATA, DOCUMENTS, "item", "test", RetrievalConfig())
    scores = SparseBM25(queries.documents).scores(queries.counts[0])[0]
    assert scores[DATA.index["c"]] > scores[DATA.index["d"]] > scores[DATA.index["g"]] > 0


def test_an_empty_query_ranks_by_popularity():
    # u3 (test, item setting): f has no tags. Unmasked: b 1, c 0, d 0, g 2 -> the target g is
    # first by popularity, where pessimistic ties alone would put it last (4th)
    for method in RETRIEVAL_METHODS:
        result = rank_targets(DATA, DOCUMENTS, method, "item", "test")
        assert result.ranks[2] == 1
    # u4 (test): masked g, e, a; its target b (1) is behind nothing more popular: c, d, f have 0
    assert rank_targets(DATA, None, "popular", "user", "test").ranks[3] == 1
    # u1 (validation): masked a, b; target c (0) is behind e (3) and g (2), tied with d and f
    assert rank_targets(DATA, None, "popular", "user", "validation").ranks[0] == 5


def test_rank_result_reports_query_stats():
    result = rank_targets(DATA, DOCUMENTS, "birank", "item", "test")
    assert result.n_users == 4 and result.n_candidates == 7
    assert result.empty_query_share == 0.25  # u3
    assert result.iterations is not None and result.converged
    assert result.targets.tolist() == [DATA.index[i] for i in ("d", "c", "g", "b")]
    popular = rank_targets(DATA, None, "popular", "item", "test")
    assert (popular.empty_query_share, popular.iterations) == (1.0, None)


def test_sampled_candidate_sets_are_shared_and_reproducible():
    config = RetrievalConfig(n_negatives=2, seed=5)
    sets = sample_candidate_sets(DATA, "test", config)
    assert all(np.array_equal(x, y) for x, y in zip(sets, sample_candidate_sets(DATA, "test", config), strict=True))
    for user, candidates in zip(DATA.users, sets, strict=True):
        assert candidates[0] == DATA.index[user.test] and len(candidates) == 3
        assert not set(candidates[1:].tolist()) & set(DATA.indices(user.history("test")).tolist())
    for method in RETRIEVAL_METHODS:
        drawn = rank_targets(DATA, DOCUMENTS, method, "user", "test", "sampled", config)
        given_sets = rank_targets(DATA, DOCUMENTS, method, "user", "test", "sampled", config, candidate_sets=sets)
        assert np.array_equal(drawn.ranks, given_sets.ranks) and drawn.n_candidates == 3
        assert np.all((drawn.ranks >= 1) & (drawn.ranks <= 3))


def test_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="needs tag documents"):
        rank_targets(DATA, None, "bm25")
    with pytest.raises(ValueError, match="unknown method"):
        rank_targets(DATA, DOCUMENTS, "tfidf")
    with pytest.raises(ValueError, match="sampled protocol"):
        sets = sample_candidate_sets(DATA, "test", RetrievalConfig())
        rank_targets(DATA, DOCUMENTS, "bm25", protocol="full", candidate_sets=sets)
    with pytest.raises(ValueError, match="unknown split"):
        rank_targets(DATA, DOCUMENTS, "bm25", split="train")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12),
)
def test_tie_keys_order_lexicographically(pairs):
    scores = np.array([[s / 3 for s, _ in pairs]])
    popularity = np.array([p * 10.0 for _, p in pairs])
    keys = tie_broken_keys(scores, popularity)[0]
    for i, (si, pi) in enumerate(pairs):
        for j, (sj, pj) in enumerate(pairs):
            assert np.sign(keys[i] - keys[j]) == np.sign(((si, pi) > (sj, pj)) - ((si, pi) < (sj, pj)))


def test_popularity_never_reorders_distinct_scores():
    keys = tie_broken_keys(np.array([[1.0, 1.0 + 1e-15, np.nan]]), np.array([1e12, 0.0, 5.0]))[0]
    assert keys[1] > keys[0] > keys[2]


def _random_data(seed: int) -> tuple[EvalData, dict[str, list[str]]]:
    rng = np.random.default_rng(seed)
    items = tuple(f"i{k}" for k in range(25))
    pool = ["dark comedy", "comedy", "time travel", "space", "robots", "romance", "paris", "noir"]
    documents = {
        item: list(rng.choice(pool, size=rng.integers(0, 4), replace=False)) for item in items if rng.random() < 0.8
    }
    users = []
    for u in range(15):
        sequence = [items[k] for k in rng.permutation(len(items))[: rng.integers(3, 11)]]
        users.append(UserSequence(f"u{u}", tuple(sequence[:-2]), sequence[-2], sequence[-1]))
    return EvalData(items, tuple(users)), documents


def _reference_ranks(data, documents, method, setting, split, config, candidate_sets):
    """One user at a time: the query from the history's term lists, the full (score,
    popularity) comparison with pessimistic ties."""
    term_lists = [[t for t, _ in tokenize(documents.get(item, []), config.tokenization)] for item in data.item_ids]
    terms = TermIndex.from_term_lists(term_lists)
    bm25 = SparseBM25(terms.matrix(term_lists))
    popularity = data.train_popularity()
    ranks = []
    for u, user in enumerate(data.users):
        history = user.history(split)
        items = history[-config.max_history_items :] if setting == "user" else history[-1:]
        query = [term for item in items for term in term_lists[data.index[item]]]
        scores = bm25.scores(terms.matrix([query]))[0] if method == "bm25" else np.zeros(data.n_items)
        target, masked = data.index[user.target(split)], set(data.indices(history).tolist())
        candidates = range(data.n_items) if candidate_sets is None else candidate_sets[u]
        key = lambda j: (scores[j], popularity[j])  # noqa: E731
        ranks.append(1 + sum(1 for j in candidates if j != target and j not in masked and key(j) >= key(target)))
    return np.array(ranks)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", ["user", "item"])
def test_vectorized_ranks_match_a_per_user_loop(seed, setting):
    data, documents = _random_data(seed)
    config = RetrievalConfig(max_history_items=4, chunk_size=4, n_negatives=6, seed=seed)
    sets = sample_candidate_sets(data, "test", config)
    for method in ("bm25", "popular"):
        for protocol, candidate_sets in (("full", None), ("sampled", sets)):
            result = rank_targets(data, documents, method, setting, "test", protocol, config, candidate_sets)
            expected = _reference_ranks(data, documents, method, setting, "test", config, candidate_sets)
            assert result.ranks.tolist() == expected.tolist(), (method, protocol)


def test_a_sub_catalog_evaluates_each_split_whose_target_lies_inside():
    full = EvalData(
        item_ids=("a", "b", "c", "d", "e", "f"),
        users=(
            UserSequence("both", ("a", "e"), "b", "c"),
            UserSequence("test_only", ("a", "b"), "e", "c"),  # its test history loses the validation item e
            UserSequence("validation_only", ("b", "c"), "d", "f"),
            UserSequence("no_train", ("e",), "a", "b"),  # validation has nothing before it; test has a
            UserSequence("trains_only", ("a", "c"), "e", "f"),
            UserSequence("outside", ("e", "f"), "e", "f"),
        ),
    )
    data = full.restrict_to(["a", "b", "c", "d"])
    assert data.item_ids == ("a", "b", "c", "d")
    # the old protocol kept only users with both targets inside: "both"
    assert [u.user_id for u in data.split_users("validation")] == ["both", "validation_only"]
    assert [u.user_id for u in data.split_users("test")] == ["both", "test_only", "no_train"]
    assert {u.user_id: u.history("test") for u in data.split_users("test")} == {
        "both": ("a", "b"), "test_only": ("a", "b"), "no_train": ("a",)
    }  # fmt: skip
    # every user with an item inside trains the recommenders and counts in train popularity
    assert [u.user_id for u in data.users] == ["both", "test_only", "validation_only", "no_train", "trains_only"]
    assert data.train_popularity().tolist() == [3, 2, 2, 0]
    # every consumer of a split sees that split's users
    for split, n_users in (("validation", 2), ("test", 3)):
        candidate_sets = sample_candidate_sets(data, split, RetrievalConfig(n_negatives=2))
        result = rank_targets(data, DOCUMENTS, "bm25", "user", split, "sampled", candidate_sets=candidate_sets)
        assert len(candidate_sets) == result.n_users == n_users
        assert history_batch(data, split, max_length=4).shape == (n_users, 4)
        assert interaction_matrix(data, split).shape == (n_users, 4)
    assert interaction_matrix(data, None).shape == (5, 4)
    with pytest.raises(ValueError, match="unknown split"):
        data.split_users("train")
