"""BETag generation: the finetuned model, prompted with an item's own base tags, decodes
several diverse beams; their tags, aggregated, are the item's BETags.

Only base tags are needed, so items without any behavior (cold start) get BETags too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from dagster_betag.llm.behavior import prompt_text
from dagster_betag.llm.decoding import DiverseBeamConfig, diverse_beam_search
from dagster_betag.llm.tags import parse_tags


@dataclass(frozen=True)
class BetagConfig:
    """Decoding and aggregation knobs (the official run: 40 groups of 1 beam, lambda 1.0,
    64 new tokens; the defaults here fit a 2-core CPU)."""

    num_groups: int = 4
    beams_per_group: int = 1
    diversity_penalty: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int = 32
    top_k: int = 15  # tags kept per item after aggregation
    # decoded rows per batch (items x groups x beams): per-step overhead dominates small
    # batches on CPU (measured here: 4 groups, 8 -> 32 items per batch: 0.90 -> 0.67 s/item;
    # 1 group, 8 -> 64 items: 0.52 -> 0.29 s/item)
    batch_rows: int = 128

    @property
    def items_per_batch(self) -> int:
        return max(1, self.batch_rows // (self.num_groups * self.beams_per_group))
    include_base_tags: bool = True  # the base tags count as beam 0

    def decoding(self) -> DiverseBeamConfig:
        return DiverseBeamConfig(
            num_groups=self.num_groups,
            beams_per_group=self.beams_per_group,
            diversity_penalty=self.diversity_penalty,
            min_new_tokens=self.min_new_tokens,
            max_new_tokens=self.max_new_tokens,
        )


@dataclass(frozen=True)
class BetagVariant:
    """A row of the poster's Table 3: whether the finetuned model decodes, and whether it
    decodes several diverse beams (else one greedy beam)."""

    name: str
    finetuned: bool
    multi_beam: bool

    def decoding_config(self, config: BetagConfig) -> BetagConfig:
        return config if self.multi_beam else replace(config, num_groups=1, beams_per_group=1)


FULL_BETAG = BetagVariant("betag", finetuned=True, multi_beam=True)
ABLATIONS = (
    BetagVariant("no_finetune", finetuned=False, multi_beam=True),
    BetagVariant("one_beam", finetuned=True, multi_beam=False),
    BetagVariant("neither", finetuned=False, multi_beam=False),
)


@dataclass(frozen=True)
class WeightedTag:
    tag: str
    n_beams: int  # beams whose tags contain it (beam 0 = the base tags)
    score: float  # sum over those beams of 1 / (1 + position of the tag in the beam)


@dataclass(frozen=True)
class ItemBetags:
    item_id: str
    beam_texts: list[str]  # raw decoded text per generated beam
    beam_tags: list[list[str]]  # parsed tags per beam; index 0 is the base tags when included
    tags: list[WeightedTag]  # the aggregated top-K, best first


def aggregate_beams(beam_tags: Sequence[Sequence[str]], top_k: int) -> list[WeightedTag]:
    """Rank tags by how many beams agree on them, then by how early they come.

    A tag counts once per beam; ties keep first appearance order, so the result is
    deterministic.
    """
    n_beams: dict[str, int] = {}
    score: dict[str, float] = {}
    for tags in beam_tags:
        for position, tag in enumerate(dict.fromkeys(tags)):
            n_beams[tag] = n_beams.get(tag, 0) + 1
            score[tag] = score.get(tag, 0.0) + 1.0 / (1 + position)
    first_seen = {tag: order for order, tag in enumerate(n_beams)}
    ranked = sorted(n_beams, key=lambda tag: (-n_beams[tag], -score[tag], first_seen[tag]))
    return [WeightedTag(tag, n_beams[tag], score[tag]) for tag in ranked[:top_k]]


@torch.no_grad()
def generate_betags(
    llm,
    items: Sequence[tuple[str, Sequence[str]]],
    config: BetagConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> list[ItemBetags]:
    """BETags for ``(item_id, base_tags)`` pairs, in input order.

    Each item is prompted exactly as in finetuning, as a one-item sequence of its own
    base tags; items are batched by prompt length to keep padding small.
    """
    tokenizer = llm.tokenizer
    prompts = [prompt_text(tokenizer, [list(tags)]) for _, tags in items]
    order = sorted(range(len(items)), key=lambda index: len(prompts[index]))
    results: dict[int, ItemBetags] = {}
    for first in range(0, len(order), config.items_per_batch):
        batch = order[first : first + config.items_per_batch]
        encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        output = diverse_beam_search(
            llm.model,
            encoded.input_ids.to(llm.device),
            encoded.attention_mask.to(llm.device),
            config.decoding(),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, index in enumerate(batch):
            item_id, base_tags = items[index]
            texts = tokenizer.batch_decode(output.sequences[row], skip_special_tokens=True)  # (G*B,) strings
            beams = [parse_tags(text) for text in texts]
            if config.include_base_tags:
                beams = [list(base_tags), *beams]
            results[index] = ItemBetags(item_id, texts, beams, aggregate_beams(beams, config.top_k))
        if on_batch:
            on_batch(len(batch))
    return [results[index] for index in range(len(items))]
