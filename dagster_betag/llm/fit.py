"""Does the finetuned model carry behavior? Two measurements of generated beams against the
behavior they were meant to learn, each beside the reference that makes it readable.

*Behavior targets.* For an item i with train successors j (``n_ij`` transitions i → j), a
tag's behavior score is ``score_i(t) = sum_j n_ij * [t in base_tags(j)]``; the item's target
``T_i`` is its ``max_tags`` best-scoring tags (ties: the order of first appearance, successors
most frequent first). Per-item finetuning examples answer with ``T_i``. Weighted by
``transitions_idf``, the score is ``score_i(t) * ln(N / df(t))`` (N items with base tags, df(t)
those whose base tags hold t), so the tags every popular successor holds stop filling every
item's target.

*In-sample fit.* With ``G_i`` the union of item i's generated beams' tags,
``fit = mean_i |T_i ∩ G_i| / |T_i|`` over the items with a target. Beside it: the same share
in the item's own base tags (what copying the input gets) and in the beams of another item
(a fixed derangement: what writing the same tags for every item gets).

*Input sensitivity.* The mean Jaccard similarity ``|G_i ∩ G_k| / |G_i ∪ G_k|`` over item
pairs i < k (all pairs, or a seeded sample of ``max_pairs``), beside the same for the base
tags. Beams that ignore their input overlap far more than the inputs do.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

Successors = Mapping[str, Sequence[tuple[str, int]]]  # item -> (next item, transitions), most first

# how a behavior target weighs a successor tag (module docstring)
TARGET_WEIGHTINGS = ("transitions", "transitions_idf")


def behavior_targets(
    successors: Successors,
    tags_by_item: Mapping[str, Sequence[str]],
    max_tags: int | None = None,
    *,
    weighting: str = "transitions",
) -> dict[str, list[str]]:
    """item -> ``T_i``, for every item with at least one tagged successor (module docstring);
    ``max_tags`` None keeps every successor tag, best first."""
    if weighting not in TARGET_WEIGHTINGS:
        raise ValueError(f"unknown target weighting {weighting!r}; use one of {', '.join(TARGET_WEIGHTINGS)}")
    idf: dict[str, float] = {}
    if weighting == "transitions_idf":
        tagged = [set(tags) for tags in tags_by_item.values() if tags]
        df = Counter(tag for tags in tagged for tag in tags)
        idf = {tag: math.log(len(tagged) / n) for tag, n in df.items()}
    targets = {}
    for item_id, nexts in successors.items():
        score: dict[str, float] = {}
        for next_item_id, n_transitions in nexts:
            for tag in dict.fromkeys(tags_by_item.get(next_item_id, ())):
                score[tag] = score.get(tag, 0) + n_transitions * idf.get(tag, 1.0)
        if score:
            first_seen = {tag: order for order, tag in enumerate(score)}
            targets[item_id] = sorted(score, key=lambda tag: (-score[tag], first_seen[tag]))[:max_tags]
    return targets


@dataclass(frozen=True)
class FitMeasures:
    """The module docstring's measurements over ``n_items`` items (``n_target_items`` with a
    behavior target); shares and similarities in [0, 1]."""

    n_items: int
    n_target_items: int
    in_sample_fit: float  # share of T_i in the generated beams
    in_sample_fit_of_base_tags: float  # ... in the item's own base tags
    in_sample_fit_of_other_items: float  # ... in another item's generated beams
    beam_jaccard: float  # mean pairwise Jaccard of generated tag sets
    base_tag_jaccard: float  # ... of base tags

    def metadata(self) -> dict[str, float | int]:
        return {name: round(value, 4) if isinstance(value, float) else value for name, value in vars(self).items()}


def share_of_target(target: Sequence[str], tags: Sequence[str] | set[str]) -> float:
    return len(set(target) & set(tags)) / len(target)


def mean_pairwise_jaccard(tag_sets: Sequence[set[str]], *, max_pairs: int = 20_000, seed: int = 0) -> float:
    """Mean Jaccard over all pairs, or over ``max_pairs`` pairs drawn with ``seed``; two empty
    sets count as identical (1.0); nan with fewer than two sets."""
    n = len(tag_sets)
    if n < 2:
        return float("nan")
    n_pairs = n * (n - 1) // 2
    if n_pairs <= max_pairs:
        pairs = list(combinations(range(n), 2))
    else:
        rng = random.Random(seed)
        pairs = [tuple(rng.sample(range(n), 2)) for _ in range(max_pairs)]
    total = 0.0
    for a, b in pairs:
        union = tag_sets[a] | tag_sets[b]
        total += len(tag_sets[a] & tag_sets[b]) / len(union) if union else 1.0
    return total / len(pairs)


def measure_fit(
    generated: Mapping[str, Sequence[Sequence[str]]],
    base_tags: Mapping[str, Sequence[str]],
    targets: Mapping[str, Sequence[str]],
) -> FitMeasures:
    """The measurements for the items of ``generated`` (item -> its generated beams' tags,
    the base-tag beam not among them)."""
    items = sorted(generated)
    beam_sets = {item: {tag for beam in generated[item] for tag in beam} for item in items}
    with_target = [item for item in items if targets.get(item)]
    # a derangement: item k is compared with the beams of item k+1 (in sorted order)
    other = {item: with_target[(k + 1) % len(with_target)] for k, item in enumerate(with_target)}

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return FitMeasures(
        n_items=len(items),
        n_target_items=len(with_target),
        in_sample_fit=mean([share_of_target(targets[i], beam_sets[i]) for i in with_target]),
        in_sample_fit_of_base_tags=mean([share_of_target(targets[i], base_tags.get(i, ())) for i in with_target]),
        in_sample_fit_of_other_items=mean(
            [share_of_target(targets[i], beam_sets[other[i]]) for i in with_target] if len(with_target) > 1 else []
        ),
        beam_jaccard=mean_pairwise_jaccard([beam_sets[i] for i in items]),
        base_tag_jaccard=mean_pairwise_jaccard([set(base_tags.get(i, ())) for i in items]),
    )
