"""Sequential recommendation as an evaluation of tag sources: train a model per seed, rank
each user's target under one or more protocols, and summarize over seeds (library code,
no Dagster).

Models: those of ``recommenders.RECOMMENDERS``: "sasrec" (IDs only), "unisrec" (IDs + the
item texts of one tag source), "als" (classic CF reference). Validation serves only early stopping; the ranks returned are
those of ``split`` (the test split unless asked otherwise; asking for "validation"
returns ranks early stopping has already seen, so they are optimistic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from dagster_betag.evaluation.data import EvalData
from dagster_betag.evaluation.metrics import CUTOFF, hit_at, ndcg_at
from dagster_betag.evaluation.recommenders import recommender_named
from dagster_betag.evaluation.sasrec import Log, TrainingResult

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
    kind: str,
    protocols: Mapping[str, Candidates],
    split: str = "test",
    text_embeddings: np.ndarray | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    config: object | None = None,
    log: Log | None = None,
    settings: Sequence[str] = ("user",),
) -> list[SeedRun]:
    """Train one model per seed and rank ``split`` under every setting and protocol with
    that model (so they all cost one training). ``text_embeddings``: (n_items, D) in
    catalog order, required by "unisrec" only; ``config``: the recommender's config type
    (its defaults when None). ALS has no sequence input, so it ranks in the "user" setting
    only."""
    recommender = recommender_named(kind)
    if config is None:
        config = recommender.config_type()
    if not isinstance(config, recommender.config_type):
        raise TypeError(f"{kind} needs a {recommender.config_type.__name__}, got {type(config).__name__}")
    runs = []
    for seed in seeds:
        fitted = recommender.fit(data, replace(config, seed=seed), text_embeddings, log)
        ranks = {
            (setting, name): fitted.rank(data, split, candidates, setting)
            for setting in recommender.settings(settings)
            for name, candidates in protocols.items()
        }
        runs.append(SeedRun(seed, ranks, fitted.training))
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


def _seed_line(kind: str, split: str, run: SeedRun) -> str:
    parts = [f"{kind} seed {run.seed}"]
    if run.training is not None:
        t = run.training
        parts.append(f"best epoch {t.best_epoch}/{t.epochs} (validation N@10 {t.best_validation_ndcg:.4f}), {t.seconds:.0f} s")
    for (setting, name), ranks in run.ranks.items():
        metrics = seed_summary([ranks])
        parts.append(f"{split} {setting}/{name}: " + ", ".join(f"{m} {mean:.4f}" for m, (mean, _) in metrics.items()))
    return "; ".join(parts)
