"""Ranking metrics and their summaries on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dagster_betag.evaluation.metrics import hit_at, ndcg_at, sampled_candidates, target_rank
from dagster_betag.evaluation.retrieval import summarize_ranks


def test_hit_and_ndcg_by_hand():
    assert (hit_at(1), ndcg_at(1)) == (1.0, 1.0)
    assert ndcg_at(3) == pytest.approx(0.5)  # 1 / log2(4)
    assert (hit_at(10), ndcg_at(10)) == (1.0, pytest.approx(1 / math.log2(11)))
    assert (hit_at(11), ndcg_at(11)) == (0.0, 0.0)


def test_target_rank_counts_strictly_higher_scores():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert target_rank(scores, 1) == 1
    assert target_rank(scores, 2) == 3
    assert target_rank(scores, 0) == 4


def test_ties_are_pessimistic():
    assert target_rank(np.zeros(5), 2) == 5
    assert target_rank(np.array([1.0, 2.0, 2.0, 0.0]), 1) == 2


def test_masked_and_non_candidate_items_do_not_count():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert target_rank(scores, 3, masked=np.array([0, 2])) == 2
    assert target_rank(scores, 3, candidates=np.array([3, 4, 1])) == 2
    # masking the target itself changes nothing: it is never masked
    assert target_rank(scores, 3, masked=np.array([3])) == 4


def test_nan_scores_rank_last():
    scores = np.array([np.nan, 0.2, 0.1])
    assert target_rank(scores, 2) == 2  # the NaN item does not outrank the target
    assert target_rank(scores, 0) == 3  # a NaN target is below everything (pessimistic at -inf)


def test_sampled_candidates_exclude_history_and_hold_the_target_once():
    history = np.array([0, 1, 2, 3])
    candidates = sampled_candidates(50, 7, history, 20, np.random.default_rng(3))
    assert candidates[0] == 7 and np.count_nonzero(candidates == 7) == 1
    assert len(candidates) == 21 and len(set(candidates.tolist())) == 21
    assert not set(candidates.tolist()) & set(history.tolist())


def test_sampled_candidates_are_reproducible_by_seed():
    draw = lambda seed: sampled_candidates(200, 5, np.array([1, 2]), 30, np.random.default_rng(seed))  # noqa: E731
    assert np.array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


def test_sampled_candidates_shrink_when_few_items_remain():
    candidates = sampled_candidates(6, 0, np.array([1, 2]), 99, np.random.default_rng(0))
    assert sorted(candidates.tolist()) == [0, 3, 4, 5]


def test_summarize_ranks_by_hand():
    summary = summarize_ranks(np.array([1, 3, 11]))
    # H = [1, 1, 0]: mean 2/3, sample sd sqrt(1/3), se 1/3
    assert summary["H@10"] == pytest.approx(2 / 3)
    assert summary["H@10_se"] == pytest.approx(1 / 3)
    # N = [1, 0.5, 0]: mean 0.5, sample sd 0.5, se 0.5 / sqrt(3)
    assert summary["N@10"] == pytest.approx(0.5)
    assert summary["N@10_se"] == pytest.approx(0.5 / math.sqrt(3))
    assert summary["n"] == 3


def test_summarize_ranks_respects_the_cutoff():
    summary = summarize_ranks(np.array([2, 6]), cutoff=5)
    assert summary["H@5"] == 0.5
    assert summary["N@5"] == pytest.approx(0.5 / math.log2(3))
