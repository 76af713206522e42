"""The recommenders: name -> how one is fitted for a seed and ranks a split (library code, no
Dagster). The one place their names and display names are written; ``sequential.run_seeds``,
the runner's config and the report read them from here. A new recommender is one module
plus one line of ``RECOMMENDERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dagster_betag.evaluation.als import ALSConfig, ALSRecommender
from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.sasrec import (
    Log,
    SASRec,
    SASRecConfig,
    SequentialRecommender,
    TrainingResult,
    rank_split,
    train,
)
from dagster_betag.evaluation.unisrec import UniSRec, UniSRecConfig


class FittedRecommender(Protocol):
    """A model trained on the train sequences, for one seed."""

    training: TrainingResult | None  # what early stopping saw (None without validation-driven training)

    def rank(self, data: EvalData, split: str, candidates: Sequence[np.ndarray] | None, setting: str) -> np.ndarray:
        """(n_users,) 1-indexed rank of each user's ``split`` target (``metrics.target_rank``,
        the split's history masked), among all items or among each user's ``candidates``."""
        ...


@dataclass(frozen=True)
class Recommender:
    """``fit(data, config, text_embeddings, log)`` trains one; ``config_type`` holds its knobs
    (``config(max_epochs)`` the run's defaults). ``sequential``: it reads the history in order
    (so it ranks in every setting) and trains by epochs with early stopping; ALS does neither
    and ranks in the "user" setting only. ``uses_text``: it needs the (n_items, D) text
    embeddings of one tag source, so it runs once per source."""

    name: str
    label: str
    config_type: type
    sequential: bool
    uses_text: bool
    fit: Callable[[EvalData, object, np.ndarray | None, Log | None], FittedRecommender]

    def config(self, max_epochs: int) -> object:
        """Its default config, with the run's epoch budget where it trains by epochs."""
        return self.config_type(max_epochs=max_epochs) if self.sequential else self.config_type()

    def settings(self, asked: Sequence[str]) -> tuple[str, ...]:
        """The settings it ranks for a run that asks for ``asked``."""
        return tuple(asked) if self.sequential else ("user",)


@dataclass
class FittedSequential:
    """SASRec's encoder (or UniSRec's) after early stopping, ranked by ``sasrec.rank_split``."""

    model: SequentialRecommender
    training: TrainingResult

    def rank(self, data: EvalData, split: str, candidates: Sequence[np.ndarray] | None, setting: str) -> np.ndarray:
        return rank_split(self.model, data, split, candidates, setting=setting)


@dataclass
class FittedALS:
    """ALS factors; with no sequence input, every setting ranks as "user"."""

    model: ALSRecommender
    training: None = None

    def rank(self, data: EvalData, split: str, candidates: Sequence[np.ndarray] | None, setting: str) -> np.ndarray:
        return self.model.rank_split(data, split, candidates)


def fit_sasrec(
    data: EvalData, config: SASRecConfig, text_embeddings: np.ndarray | None, log: Log | None
) -> FittedSequential:
    return _trained(SASRec(data.n_items, config), data, "sasrec", log)


def fit_unisrec(
    data: EvalData, config: UniSRecConfig, text_embeddings: np.ndarray | None, log: Log | None
) -> FittedSequential:
    if text_embeddings is None or text_embeddings.shape[0] != data.n_items:
        shape = None if text_embeddings is None else text_embeddings.shape
        raise ValueError(f"unisrec needs text embeddings of shape ({data.n_items}, D), got {shape}")
    return _trained(UniSRec(text_embeddings, config), data, "unisrec", log)


def fit_als(data: EvalData, config: ALSConfig, text_embeddings: np.ndarray | None, log: Log | None) -> FittedALS:
    return FittedALS(ALSRecommender(config).fit(data))


def _trained(model: SequentialRecommender, data: EvalData, name: str, log: Log | None) -> FittedSequential:
    training = train(model, data, model.config, log, name=f"{name} seed {model.config.seed}")
    return FittedSequential(model, training)


RECOMMENDERS: dict[str, Recommender] = {
    recommender.name: recommender
    for recommender in (
        Recommender("sasrec", "SASRec", SASRecConfig, sequential=True, uses_text=False, fit=fit_sasrec),
        Recommender("unisrec", "UniSRec", UniSRecConfig, sequential=True, uses_text=True, fit=fit_unisrec),
        Recommender("als", "ALS", ALSConfig, sequential=False, uses_text=False, fit=fit_als),
    )
}


def recommender_named(name: str) -> Recommender:
    if name not in RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; use one of {', '.join(RECOMMENDERS)}")
    return RECOMMENDERS[name]
