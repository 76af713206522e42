"""Sequential recommendation as an evaluation of tag sources: train a model per seed, rank
each user's target under one or more protocols, and summarize over seeds (library code,
no Dagster).

Models: "sasrec" (IDs only), "unisrec" (IDs + the item texts of one tag source), "als"
(classic CF reference). Validation serves only early stopping; the ranks returned are
those of ``split`` (the test split unless asked otherwise; asking for "validation"
returns ranks early stopping has already seen, so they are optimistic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from dagster_betag.evaluation.als import ALSConfig, ALSRecommender
from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.metrics import CUTOFF, hit_at, ndcg_at
from dagster_betag.evaluation.sasrec import Log, SASRec, SASRecConfig, SequentialRecommender, TrainingResult, rank_split, train
from dagster_betag.evaluation.unisrec import UniSRec, UniSRecConfig

Kind = Literal["sasrec", "unisrec", "als"]
KINDS: tuple[str, ...] = ("sasrec", "unisrec", "als")
# per user, the item indices a sampled protocol ranks among; None = all items
Candidates = Sequence[np.ndarray] | None


@dataclass(frozen=True)
class SeedRun:
    """One seed: (n_users,) ranks of the split's targets per (setting, protocol), and what
    early stopping saw (None for ALS, which has no validation-driven training)."""

    seed: int
    ranks: dict[tuple[str, str], np.ndarray]
    training: TrainingResult | None


def run_seeds(
    data: EvalData,
    kind: Kind,
    protocols: Mapping[str, Candidates],
    split: str = "test",
    text_embeddings: np.ndarray | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    config: SASRecConfig | ALSConfig | None = None,
    log: Log | None = None,
    settings: Sequence[str] = ("user",),
) -> list[SeedRun]:
    """Train one model per seed and rank ``split`` under every setting and protocol with
    that model (so they all cost one training). ``text_embeddings``: (n_items, D) in
    catalog order, required by "unisrec" only. ALS has no sequence input, so it ranks in
    the "user" setting only."""
    runs = []
    for seed in seeds:
        if kind == "als":
            als = ALSRecommender(replace(_config(kind, config, ALSConfig), seed=seed)).fit(data)
            ranks = {
                ("user", name): als.rank_split(data, split, candidates) for name, candidates in protocols.items()
            }
            training = None
        else:
            model = _sequential_model(data, kind, text_embeddings, seed, config)
            training = train(model, data, model.config, log, name=f"{kind} seed {seed}")
            ranks = {
                (setting, name): rank_split(model, data, split, candidates, setting=setting)
                for setting in settings
                for name, candidates in protocols.items()
            }
        runs.append(SeedRun(seed, ranks, training))
        if log is not None:
            log(_seed_line(kind, split, runs[-1]))
    return runs


def seed_summary(per_seed_ranks: Sequence[np.ndarray], cutoff: int = CUTOFF) -> dict[str, tuple[float, float]]:
    """{"H@k": (mean, std), "N@k": (mean, std)} over seeds of each seed's mean over users;
    std is the sample standard deviation across seeds (0 for one seed)."""
    summary = {}
    for name, metric in ((f"H@{cutoff}", hit_at), (f"N@{cutoff}", ndcg_at)):
        values = np.array([np.mean([metric(int(r), cutoff) for r in ranks]) for ranks in per_seed_ranks])
        summary[name] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return summary


def _sequential_model(data: EvalData, kind: str, text_embeddings: np.ndarray | None, seed: int, config: SASRecConfig | ALSConfig | None) -> SequentialRecommender:
    if kind == "sasrec":
        return SASRec(data.n_items, replace(_config(kind, config, SASRecConfig), seed=seed))
    if kind == "unisrec":
        if text_embeddings is None or text_embeddings.shape[0] != data.n_items:
            shape = None if text_embeddings is None else text_embeddings.shape
            raise ValueError(f"unisrec needs text embeddings of shape ({data.n_items}, D), got {shape}")
        return UniSRec(text_embeddings, replace(_config(kind, config, UniSRecConfig), seed=seed))
    raise ValueError(f"unknown recommender {kind!r}; use one of {', '.join(KINDS)}")


def _config(kind: str, config: object, expected: type) -> object:
    if config is None:
        return expected()
    if not isinstance(config, expected):
        raise TypeError(f"{kind} needs a {expected.__name__}, got {type(config).__name__}")
    return config


def _seed_line(kind: str, split: str, run: SeedRun) -> str:
    parts = [f"{kind} seed {run.seed}"]
    if run.training is not None:
        t = run.training
        parts.append(f"best epoch {t.best_epoch}/{t.epochs} (validation N@10 {t.best_validation_ndcg:.4f}), {t.seconds:.0f} s")
    for (setting, name), ranks in run.ranks.items():
        metrics = seed_summary([ranks])
        parts.append(f"{split} {setting}/{name}: " + ", ".join(f"{m} {mean:.4f}" for m, (mean, _) in metrics.items()))
    return "; ".join(parts)
