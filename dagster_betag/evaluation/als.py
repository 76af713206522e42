"""Implicit-feedback ALS (Hu, Koren & Volinsky, ICDM 2008) as a classic collaborative
filtering reference, ranked exactly like the sequential models (library code, no Dagster).

Item factors are fitted on the train interactions (binary, weighted by ``alpha``). A user's
factors for a split are then solved from that split's history with the item factors fixed
(the test history includes the validation item), mirroring the sequential models, whose
test input includes it too. Scores s_i = <u, q_i>; ranks from ``metrics.target_rank``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.metrics import target_rank


@dataclass(frozen=True)
class ALSConfig:
    """``factors`` as the sequential models' hidden size; ``alpha`` the confidence weight
    of an observed interaction (implicit's scaling); one thread by default so a seed gives
    the same factors."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15
    seed: int = 0
    num_threads: int = 1


def interaction_matrix(data: EvalData, split: str | None) -> sparse.csr_matrix:
    """(n_users, n_items) binary: every user's learnable train sequence (``split`` None: what
    ALS trains on, no new item) or the ``split`` history of each user that split ranks
    (``data.split_users``)."""
    users = data.users if split is None else data.split_users(split)
    rows, columns = [], []
    for user_index, user in enumerate(users):
        items = data.indices(data.learnable_train(user) if split is None else user.history(split))
        rows.append(np.full(len(items), user_index))
        columns.append(items)
    row, column = np.concatenate(rows), np.concatenate(columns)
    matrix = sparse.csr_matrix((np.ones(len(row), dtype=np.float32), (row, column)), shape=(len(users), data.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a repeated interaction counts once
    return matrix


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    from threadpoolctl import threadpool_limits  # installed with implicit

    with threadpool_limits(1, "blas"):
        yield


class ALSRecommender:
    """implicit's CPU ALS; BLAS runs single-threaded inside it, as implicit requires (its
    own threads parallelize over users and items)."""

    def __init__(self, config: ALSConfig = ALSConfig()):
        from implicit.cpu.als import AlternatingLeastSquares

        self.config = config
        with _single_threaded_blas():
            self.model = AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                random_state=config.seed,
                num_threads=config.num_threads,
            )

    def fit(self, data: EvalData) -> ALSRecommender:
        with _single_threaded_blas():
            self.model.fit(interaction_matrix(data, None), show_progress=False)
        return self

    def rank_split(self, data: EvalData, split: str, candidates: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """(n_users,) 1-indexed ranks of the ``split`` targets, history masked, among all
        items or the user's ``candidates`` (as ``sasrec.rank_split``)."""
        users = data.split_users(split)
        if candidates is not None and len(candidates) != len(users):
            raise ValueError(f"{len(candidates)} candidate sets for {len(users)} users")
        histories = interaction_matrix(data, split)
        with _single_threaded_blas():
            user_factors = self.model.recalculate_user(np.arange(len(users)), histories)  # (n_users, F)
        scores = user_factors @ np.asarray(self.model.item_factors).T  # (n_users, n_items)
        return np.array(
            [
                target_rank(
                    scores[row],
                    data.index[user.target(split)],
                    masked=histories.indices[histories.indptr[row] : histories.indptr[row + 1]],
                    candidates=None if candidates is None else candidates[row],
                )
                for row, user in enumerate(users)
            ],
            dtype=np.int64,
        )
