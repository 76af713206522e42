"""BiRank against its closed-form fixed point, computed densely and independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from dagster_betag.evaluation.birank import BiRank

ALPHA, BETA = 0.85, 0.7


def _graph(seed: int = 0) -> np.ndarray:
    """(9, 7) random weights with an item (row 4) and a term (column 6) without edges."""
    rng = np.random.default_rng(seed)
    weights = rng.random((9, 7)) * (rng.random((9, 7)) < 0.4)
    weights[4, :] = 0
    weights[:, 6] = 0
    weights[0, 0] = weights[1, 0] = 2.0  # no isolated component through column 0
    return weights


def _fixed_point(weights: np.ndarray, p0: np.ndarray, u0: np.ndarray, alpha: float, beta: float):
    """p* = (I - αβ SᵀS)⁻¹ [(1-α) p⁰ + α(1-β) Sᵀu⁰], u* = β S p* + (1-β) u⁰ (columns: queries)."""
    with np.errstate(divide="ignore"):
        item = np.where(weights.sum(1) > 0, 1 / np.sqrt(weights.sum(1)), 0.0)
        term = np.where(weights.sum(0) > 0, 1 / np.sqrt(weights.sum(0)), 0.0)
    s = item[:, None] * weights * term[None, :]
    system = np.eye(weights.shape[1]) - alpha * beta * s.T @ s
    p = np.linalg.solve(system, (1 - alpha) * p0 + alpha * (1 - beta) * s.T @ u0)
    return p, beta * s @ p + (1 - beta) * u0


def _p0(counts: np.ndarray) -> np.ndarray:
    """(n_terms, n_queries) each query's counts scaled to sum 1; an empty query stays 0."""
    totals = counts.sum(1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0).T


def _queries(n_terms: int) -> np.ndarray:
    """(n_queries, n_terms) term counts: random rows, a repeated term, one on the edgeless term, an empty row."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 3, size=(5, n_terms)).astype(float)
    extra = np.zeros((3, n_terms))
    extra[0, 2] = 3.0
    extra[1, 6] = 1.0
    return np.vstack([counts, extra])


def test_converges_to_the_closed_form_fixed_point():
    weights, counts = _graph(), _queries(7)
    birank = BiRank(sparse.csr_matrix(weights), alpha=ALPHA, beta=BETA, tol=1e-13, max_iter=1000)
    result = birank.rank(sparse.csr_matrix(counts))
    p_star, u_star = _fixed_point(weights, _p0(counts), np.zeros((9, counts.shape[0])), ALPHA, BETA)
    assert result.converged and result.iterations < 1000
    np.testing.assert_allclose(result.terms, p_star.T, atol=1e-10)
    np.testing.assert_allclose(result.items, u_star.T, atol=1e-10)
    assert result.items.shape == (8, 9) and np.isfinite(result.items).all()
    assert np.all(result.items[:, 4] == 0)  # the edgeless item
    assert np.all(result.items[-1] == 0)  # the empty query
    assert np.abs(result.items[:5]).max() > 0.01  # and not everything is zero


def test_item_prior_enters_the_fixed_point():
    weights, counts = _graph(2), _queries(7)
    prior = np.random.default_rng(3).random(9)
    prior /= prior.sum()
    birank = BiRank(sparse.csr_matrix(weights), alpha=ALPHA, beta=BETA, tol=1e-13, max_iter=1000)
    result = birank.rank(counts, item_prior=prior)
    p_star, u_star = _fixed_point(weights, _p0(counts), np.repeat(prior[:, None], counts.shape[0], axis=1), ALPHA, BETA)
    np.testing.assert_allclose(result.items, u_star.T, atol=1e-10)
    np.testing.assert_allclose(result.terms, p_star.T, atol=1e-10)
    np.testing.assert_allclose(result.items[:, 4], (1 - BETA) * prior[4])  # the edgeless item keeps its prior share


def test_single_edge_by_hand():
    # S = [[1]], p0 = [1]: p = (1 - α) / (1 - αβ), u = β p
    result = BiRank(sparse.csr_matrix([[2.0]]), alpha=0.5, beta=0.5, tol=1e-14).rank(np.array([[4.0]]))
    assert result.terms[0, 0] == pytest.approx(0.5 / 0.75)
    assert result.items[0, 0] == pytest.approx(0.5 * 0.5 / 0.75)


def test_reports_iterations_and_convergence():
    weights, counts = sparse.csr_matrix(_graph()), _queries(7)
    stopped = BiRank(weights, max_iter=3).rank(counts)
    assert (stopped.iterations, stopped.converged) == (3, False) and stopped.max_change > 1e-8
    default = BiRank(weights).rank(counts)
    assert default.converged and default.max_change < 1e-8 and 1 < default.iterations < 200


def test_rejects_negative_edges():
    with pytest.raises(ValueError, match="non-negative"):
        BiRank(sparse.csr_matrix([[1.0, -1.0]]))
