"""BETag generation: the finetuned model, prompted with an item's own base tags, decodes
several diverse beams; their tags, aggregated, are the item's BETags.

Only base tags are needed, so items without any behavior (cold start) get BETags too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from dagster_betag.knobs import knob, nested
from dagster_betag.llm.behavior import prompt_text
from dagster_betag.llm.decoding import DiverseBeamConfig, diverse_beam_search
from dagster_betag.llm.prefix import prefix_cache, prefixed_batch, split_shared_prefix
from dagster_betag.llm.rules import chain_rules
from dagster_betag.llm.rules.beams import BeamTagRules
from dagster_betag.llm.rules.vocabulary import vocabulary_constraint
from dagster_betag.llm.tags import parse_tags, split_open_entry
from dagster_betag.llm.tokens import end_of_turn_ids, token_table
from dagster_betag.llm.variants import BetagVariant
from dagster_betag.llm.vocabulary import TagMap


@dataclass(frozen=True)
class BetagConfig:
    """BETag knobs: the decoding (diverse beam search) and what is done around it."""

    decoding: DiverseBeamConfig = nested(
        DiverseBeamConfig, "Diverse beam search: groups, beams, penalties, token limits."
    )
    top_k: int = knob(15, "Tags kept per item after aggregation.")
    batch_rows: int = knob(
        48,
        # per-step overhead dominates small batches on CPU (measured here: 4 groups, 8 -> 32 items per batch:
        # 0.90 -> 0.67 s/item; 1 group, 8 -> 64 items: 0.52 -> 0.29 s/item); beyond that little is gained and the
        # key/value cache grows. With the in-place cache (llm/kv_cache.py), 57 quick items, the finetuned model,
        # 4 groups: 32 / 64 / 96 rows took 28.3 / 19.6 / 19.2 s (medians) at a peak of 1.34 / 1.59 / 1.88 GB.
        # The quick `betag run` peaks in this stage: 3.13 GiB at 64 rows, 2.96 GiB at 48 (BETags 63-69 s -> 75 s)
        "Decoded rows per batch (items x groups x beams).",
    )
    include_base_tags: bool = knob(True, "The base tags count as beam 0 in the aggregation.")
    max_tags_per_beam: int | None = knob(
        8,
        "A beam ends (EOS forced) once it has written this many distinct tags; null for no cap. The finetuning "
        "targets hold at most 8 tags; without a cap, the few beams that loop ('laughs, laughs, ...') keep their "
        "whole batch decoding to max_new_tokens.",
    )
    ban_repeated_tags: bool = knob(
        True,
        "A beam cannot end an entry (separator or EOS) that repeats one of its earlier entries, so its tokens go to "
        "tags it has not written yet.",
    )
    share_prompt_prefix: bool = knob(
        True,
        "Run the behavior instruction that starts every prompt once per call, not once per item (same beams; its "
        "prefill otherwise costs about as much as the decoding).",
    )
    constrain_to_vocabulary: bool = knob(
        True,
        "Beams may only write tags of the canonical vocabulary (a prefix trie over its tokenized tags, applied inside "
        "the beam search), so every BETag can match another item's document.",
    )
    vocabulary_min_items: int = knob(
        1,
        "... to the canonical tags of at least this many items: a tag of one item can only ever match that item, and "
        "the 135M model's one-off tags are mostly junk ('adventure-1').",
    )

    @property
    def items_per_batch(self) -> int:
        """batch_rows // (G * B), at least 1."""
        return max(1, self.batch_rows // (self.decoding.num_groups * self.decoding.beams_per_group))


def variant_decoding(variant: BetagVariant, decoding: DiverseBeamConfig) -> DiverseBeamConfig:
    """The decoding of a Table 3 variant: ``decoding`` itself, or one group of one beam for the
    single-beam variants (greedy, as the diversity penalty then has nothing to push against)."""
    return decoding if variant.multi_beam else replace(decoding, num_groups=1, beams_per_group=1)


def first_group(item: ItemBetags, config: BetagConfig) -> ItemBetags:
    """The result a decode of one group of one beam gives, read off a diverse decode of the same
    model with one beam per group: group 0 gets no diversity penalty (no group before it), its
    beam search of one beam is greedy, and nothing of later groups reaches it (each row keeps
    its own rules and cache). ``config`` is the one-beam variant's (aggregation knobs)."""
    n_base = 1 if config.include_base_tags else 0
    beams = item.beam_tags[: n_base + 1]
    return ItemBetags(item.item_id, item.beam_texts[:1], beams, aggregate_beams(beams, config.top_k))


def unfinished_entry_dropped(text: str, finished: bool) -> str:
    """A beam cut by max_new_tokens ends inside an entry ("family-fr"): keep only whole entries."""
    if finished:
        return text
    whole, _ = split_open_entry(text)
    return ", ".join(entry.strip() for entry in whole)


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


def aggregate_beams(
    beam_tags: Sequence[Sequence[str]], top_k: int, tag_weight: Callable[[str], float] | None = None
) -> list[WeightedTag]:
    """Rank tags by how many beams agree on them, then by how early they come; with
    ``tag_weight``, by n_beams(tag) * tag_weight(tag) first (e.g. ``inverse_item_frequency``).

    A tag counts once per beam; ties keep first appearance order, so the result is
    deterministic. The SQL twin (``int_betag_tags_ranked``, ``betag_aggregation: idf``) ranks the same.
    """
    n_beams: dict[str, int] = {}
    score: dict[str, float] = {}
    for tags in beam_tags:
        for position, tag in enumerate(dict.fromkeys(tags)):
            n_beams[tag] = n_beams.get(tag, 0) + 1
            score[tag] = score.get(tag, 0.0) + 1.0 / (1 + position)
    first_seen = {tag: order for order, tag in enumerate(n_beams)}
    weight = (lambda tag: n_beams[tag] * tag_weight(tag)) if tag_weight else n_beams.__getitem__
    ranked = sorted(n_beams, key=lambda tag: (-weight(tag), -score[tag], first_seen[tag]))
    return [WeightedTag(tag, n_beams[tag], score[tag]) for tag in ranked[:top_k]]


def inverse_item_frequency(item_counts: Mapping[str, int], n_items: int) -> Callable[[str], float]:
    """idf(tag) = ln(N / max(df(tag), 1)): ``item_counts`` = df, the items whose *generated*
    beams hold the tag, of N = ``n_items``. A tag no generated beam wrote (only an item's base
    tags) is as rare as a tag can be, df = 1; a tag every item gets weighs 0."""
    return lambda tag: math.log(n_items / max(item_counts.get(tag, 0), 1))


@torch.no_grad()
def generate_betags(
    llm,
    items: Sequence[tuple[str, Sequence[str]]],
    config: BetagConfig,
    *,
    tag_map: TagMap | None = None,
    titles: Mapping[str, str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[ItemBetags]:
    """BETags for ``(item_id, base_tags)`` pairs, in input order.

    Each item is prompted exactly as in finetuning, as a one-item sequence of its own
    base tags (after its title, from ``titles``, for an adapter trained so); the instruction
    every prompt starts with is run once per call (its cache is shared), and items are batched by length to keep padding small. With ``tag_map``, every
    beam's tags are mapped to canonical tags (junk dropped) before aggregation, and with
    ``config.constrain_to_vocabulary`` the beams can only write its canonical tags. With
    ``config.decoding.contrastive_alpha`` > 0 every batch also carries the behavior prompt of an
    item with no tags (``prompt_text(tokenizer, [[]])``), the contrast of contrastive decoding.
    """
    tokenizer = llm.tokenizer
    eos_ids = end_of_turn_ids(llm)
    table = token_table(tokenizer)
    prompts = [
        prompt_text(tokenizer, [list(tags)], None if titles is None else [titles[item_id]]) for item_id, tags in items
    ]
    # contrastive decoding: the same prompt with the item written as no tags (and no title), split
    # on the same shared prefix
    contrastive = config.decoding.contrastive_alpha > 0
    no_item = [prompt_text(tokenizer, [[]])] if contrastive else []
    prefix_ids, suffixes = split_shared_prefix(tokenizer, prompts + no_item, enabled=config.share_prompt_prefix)
    contrast_suffix = suffixes.pop() if contrastive else None
    shared_cache = prefix_cache(llm.model, prefix_ids)
    order = sorted(range(len(items)), key=lambda index: len(suffixes[index]))
    constrained = tag_map is not None and config.constrain_to_vocabulary
    vocabulary = tag_map.vocabulary(config.vocabulary_min_items) if constrained else None
    canonical = tag_map.apply if tag_map is not None else list
    results: dict[int, ItemBetags] = {}
    for first in range(0, len(order), config.items_per_batch):
        batch = order[first : first + config.items_per_batch]
        input_ids, attention_mask = prefixed_batch(
            prefix_ids, [suffixes[i] for i in batch] + ([contrast_suffix] if contrastive else []),
            tokenizer.pad_token_id, llm.device,
        )  # fmt: skip
        contrast = {}
        if contrastive:  # the last row is the no-item prompt, laid out as the items'
            contrast = {"contrast_ids": input_ids[-1:], "contrast_mask": attention_mask[-1:]}
            input_ids, attention_mask = input_ids[:-1], attention_mask[:-1]
        output = diverse_beam_search(
            llm.model,
            input_ids,
            attention_mask,
            config.decoding,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            # the tag cap first: the constraint then keeps the EOS it leaves (the other way round
            # the cap would copy an EOS the constraint had already banned after a separator)
            logits_processor=chain_rules(
                BeamTagRules(
                    table,
                    eos_ids,
                    input_ids.shape[1],
                    max_tags=config.max_tags_per_beam,
                    ban_repeated=config.ban_repeated_tags,
                ),
                vocabulary_constraint(tokenizer, vocabulary, eos_ids, input_ids.shape[1]) if vocabulary else None,
            ),
            prefix_cache=shared_cache,
            **contrast,
        )
        ended = torch.isin(output.sequences, torch.tensor(eos_ids, device=output.sequences.device))
        finished = ended.any(dim=-1)  # (N, G*B) beams that wrote EOS, rather than running out of tokens
        for row, index in enumerate(batch):
            item_id, base_tags = items[index]
            texts = tokenizer.batch_decode(output.sequences[row], skip_special_tokens=True)  # (G*B,) strings
            beams = [
                canonical(parse_tags(unfinished_entry_dropped(text, bool(done))))
                for text, done in zip(texts, finished[row], strict=True)
            ]
            if config.include_base_tags:
                beams = [list(base_tags), *beams]
            results[index] = ItemBetags(item_id, texts, beams, aggregate_beams(beams, config.top_k))
        if on_batch:
            on_batch(len(batch))
    return [results[index] for index in range(len(items))]
