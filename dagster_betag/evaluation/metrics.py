"""Ranking metrics for one relevant item per query (library code, no Dagster).

Every method scores all candidate items; the rank of the target is then computed the same
way for all of them, so the protocol (masking, ties, sampled candidates) never differs
between methods. Ranks are 1-indexed.
"""

from __future__ import annotations

import math

import numpy as np

CUTOFF = 10
METRICS = (f"H@{CUTOFF}", f"N@{CUTOFF}")  # the metric names of eval_results and the paired mart


def target_rank(scores: np.ndarray, target: int, masked: np.ndarray | None = None, candidates: np.ndarray | None = None) -> int:
    """1-indexed rank of ``target`` among the candidates, ties broken pessimistically.

    r = 1 + #{j in C \\ M, j != t : s_j >= s_t}

    ``scores``: (n_items,) float; ``target``: the target's index; ``masked``: indices never
    ranked (the user's history; the target is never masked); ``candidates``: indices ranked
    (default: all items). Pessimistic ties: every other candidate scoring at least as high as
    the target is ranked above it, so a method that scores everything equal gets the worst
    rank, never a lucky one. NaN scores count as -inf.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    keep = np.ones(scores.shape[0], dtype=bool) if candidates is None else _index_mask(scores.shape[0], candidates)
    if masked is not None and len(masked):
        keep[np.asarray(masked, dtype=np.int64)] = False
    keep[target] = False
    return 1 + int(np.count_nonzero(scores[keep] >= scores[target]))


def hit_at(rank: int, cutoff: int = CUTOFF) -> float:
    """H@k = 1[r <= k]."""
    return 1.0 if rank <= cutoff else 0.0


def ndcg_at(rank: int, cutoff: int = CUTOFF) -> float:
    """N@k = 1[r <= k] / log2(r + 1) (one relevant item, so the ideal DCG is 1)."""
    return 1.0 / math.log2(rank + 1) if rank <= cutoff else 0.0


def sampled_candidates(
    n_items: int, target: int, excluded: np.ndarray, n_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """The target plus ``n_negatives`` items drawn uniformly without replacement from the items
    that are neither the target nor ``excluded`` (the user's history); fewer when too few remain."""
    allowed = np.ones(n_items, dtype=bool)
    allowed[np.asarray(excluded, dtype=np.int64)] = False
    allowed[target] = False
    pool = np.flatnonzero(allowed)
    negatives = rng.choice(pool, size=min(n_negatives, pool.size), replace=False)
    return np.concatenate([[target], negatives]).astype(np.int64)


def _index_mask(n: int, indices: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(indices, dtype=np.int64)] = True
    return mask
