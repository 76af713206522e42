"""Base tags: batched greedy generation of each item's tags from its description.

Library code (no Dagster): plain lists in, plain lists out, input order kept::

    llm = load_llm(LLMConfig())
    tags = generate_base_tags(llm, items, BaseTagConfig(), on_batch=progress.update)  # update(n) per batch

How the 135M model is kept on track (measured on MovieLens; see the knobs of BaseTagConfig):

- the prompt (``prompts.base_tag_messages``) shows hand-written few-shot answers as a
  numbered list, one short lowercase tag per line;
- ``rules.entries.EntryTracker`` follows, token by token, the list entries each row has
  written, and ``RepetitionBan`` (a ``rules.LogitsRule``) uses it: an entry cannot start with an article or
  with the first word of an earlier entry, cannot reuse a word of an earlier entry, cannot
  end as a copy of an earlier entry or of the title, cannot be blank, and at most one entry
  may start with a digit (which ends "1940 / 1940 / 1940" and "300, 401, 501" runs);
  ``LowercaseOnly`` bans capitalized tokens, which keeps the model from listing other titles;
- ``EnoughTags`` (a transformers StoppingCriteria) stops a row once it has written ``num_tags`` valid,
  distinct entries; every few steps the stopped rows leave the batch (``greedy.generate_batch``:
  generate() resumes from its cache with the others), so no row waits padded for the batch's
  longest answer;
- ``parse_tags`` cleans the answers and drops title echoes; optionally, attribute values
  of the catalog that contradict the item (a genre it does not have) are dropped and do not
  count toward ``num_tags``.

Speed: the system message, the few-shot turns and the start of the item's turn are the same
for every item, so their key/value cache is computed once per call and copied into each
batch (``llm/prefix.py``: the item-specific rest is left-padded *after* that shared prefix;
position ids follow the attention mask, so every row sees the positions it would see alone).
Items are sorted by prompt length to cut padding, and results come back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster_betag.knobs import knob
from dagster_betag.llm.greedy import generate_batch
from dagster_betag.llm.prefix import prefix_cache, split_shared_prefix
from dagster_betag.llm.prompts import ItemDescription, apply_chat, base_tag_messages
from dagster_betag.llm.tagger import BaseTagContext
from dagster_betag.llm.tags import clean_text, parse_tags
from dagster_betag.llm.tokens import token_table

if TYPE_CHECKING:  # model.py imports this module lazily (LoadedLLM.generate_base_tags)
    from dagster_betag.llm.model import LoadedLLM

FewShot = Sequence[tuple[ItemDescription, list[str]]]


FEW_SHOT_SOURCES = ("default", "catalog")


@dataclass(frozen=True)
class BaseTagConfig:
    """Knobs of base-tag generation."""

    num_tags: int = knob(
        8,
        "Tags asked for in the prompt; a row stops after this many valid entries, and at most this many tags are "
        "kept per item.",
    )
    max_new_tokens: int = knob(
        64,
        "Hard cap on generated tokens per item. A numbered one-word tag costs 4 tokens ('2', '.', ' word', newline); "
        "8 tags take 31-48 tokens on MovieLens, and a row that keeps writing invalid entries stops here.",
    )
    batch_size: int = knob(
        64,
        "Items per generate() call: larger batches amortize reading the weights at every step; memory grows with "
        "batch_size x (prompt + max_new_tokens). Tags do not depend on it (float32).",
    )
    ban_repeated_first_word: bool = knob(
        True,
        "An entry cannot start with the first word (first token) of an earlier entry of that row "
        "('dark comedy, dark fantasy, dark horror...'); function words such as 'of' are exempt.",
    )
    ban_duplicate_entries: bool = knob(
        True, "An entry cannot end (separator and end-of-turn banned) while it equals an earlier entry or the title."
    )
    ban_repeated_words: bool = knob(
        True,
        "Inside an entry, a word (a word-start token) already written by the row cannot come again ('first love, "
        "second love'); function words are exempt. Each content word then appears in one tag at most, which also "
        "stops 'laugh, laughter, laughs' runs.",
    )
    banned_first_words: tuple[str, ...] = knob(
        ("the", "a", "an"),
        "Words no entry may start with (any case): articles lead a small model into listing titles "
        "('the lion king') and add nothing to a tag.",
    )
    max_numeric_entries: int | None = knob(
        1,
        "How many entries may start with a digit ('1940s'); beyond it, a numbered entry cannot. null for no limit. "
        "Blank entries are never allowed.",
    )
    lowercase_only: bool = knob(
        True, "Ban tokens with uppercase letters: keeps the model from listing other titles and names."
    )
    exclusive_attributes: tuple[str, ...] = knob(
        ("genre",),
        "Attributes whose catalog values are either the item's or wrong (genres): a tag equal to such a value the "
        "item does not have is dropped and does not count toward num_tags.",
    )
    share_prompt_prefix: bool = knob(
        True,
        "Compute the key/value cache of the prompt text shared by all items once per call and reuse it in every "
        "batch (same tags, far less prefill).",
    )
    drop_finished_every: int | None = knob(
        6,
        "Rows that have stopped leave the batch every this many steps, so a batch costs about the sum of its rows' "
        "lengths rather than its longest row times its size; null runs each batch in one generate() call.",
    )
    item_noun: str = knob("movie", "What the catalog's items are called in the prompt ('movie', 'product').")
    few_shot: str = knob(
        "default",
        "The examples the prompt shows: 'default', the hand-written movie examples; 'catalog', this catalog's own "
        "items with the most human (native) tags, shown with those tags (its own tag style).",
    )

    def __post_init__(self) -> None:
        if self.num_tags < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("num_tags, max_new_tokens and batch_size must be positive")
        if self.few_shot not in FEW_SHOT_SOURCES:
            raise ValueError(f"few_shot must be one of {', '.join(FEW_SHOT_SOURCES)}, not {self.few_shot!r}")


def catalog_attribute_values(items: Iterable[ItemDescription], names: Iterable[str] = ("genre",)) -> dict[str, set[str]]:
    """Every value of the named attributes over a catalog, cleaned: the ``catalog_values``
    of a ``BaseTagContext``. Build it from the whole catalog, not from one shard,
    so that an item's tags do not depend on the shard it was generated in."""
    wanted = list(names)
    values: dict[str, set[str]] = {name: set() for name in wanted}
    for item in items:
        for name in wanted:
            for value in item.attributes.get(name, ()):
                cleaned = clean_text(value)
                if cleaned:
                    values[name].add(cleaned)
    return values


def generate_base_tags(
    llm: LoadedLLM,
    items: Sequence[ItemDescription],
    config: BaseTagConfig = BaseTagConfig(),
    *,
    context: BaseTagContext = BaseTagContext(),
    on_batch: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Each item's base tags (at most ``config.num_tags``, in generation order), in the order of ``items``.

    ``on_batch(n)`` is called after each batch with the number of items that batch finished
    (an increment, as ``tqdm.update`` and the pipeline's ``Progress.advance`` take).
    ``context.catalog_values`` (see ``catalog_attribute_values``) enables dropping tags that name
    another value of an exclusive attribute (a genre the item does not have).
    """
    texts = generate_base_tag_texts(llm, items, config, context=context, on_batch=on_batch)
    return [
        tags_from_answer(item, text, config, context.catalog_values) for item, text in zip(items, texts, strict=True)
    ]


def tags_from_answer(
    item: ItemDescription,
    text: str,
    config: BaseTagConfig,
    catalog_values: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """The base tags kept from one raw answer: parsed, title echoes and contradicting attribute
    values dropped, at most ``config.num_tags``. Shared by local generation and ``llm/api.py``,
    so a model behind an API is judged by exactly the same rules."""
    excluded = _contradicting_values(item, catalog_values, config.exclusive_attributes)
    tags = parse_tags(text, echoes=[item.title])
    return [tag for tag in tags if tag not in excluded][: config.num_tags]


def generate_base_tag_texts(
    llm: LoadedLLM,
    items: Sequence[ItemDescription],
    config: BaseTagConfig,
    *,
    context: BaseTagContext = BaseTagContext(),
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The raw answers behind ``generate_base_tags`` (for logs and debugging: of the ``config``
    being looked into, so it has no default), in input order."""
    if not items:
        return []
    tokenizer = llm.tokenizer
    prompts = [
        apply_chat(tokenizer, base_tag_messages(item, context.few_shot, num_tags=config.num_tags, item_noun=config.item_noun))
        for item in items
    ]
    prefix_ids, suffixes = split_shared_prefix(tokenizer, prompts, enabled=config.share_prompt_prefix)
    shared_cache = prefix_cache(llm.model, prefix_ids)
    excluded = [_contradicting_values(item, context.catalog_values, config.exclusive_attributes) for item in items]

    order = sorted(range(len(items)), key=lambda i: (len(suffixes[i]), i))
    texts: list[str] = [""] * len(items)
    table = token_table(tokenizer)
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        answers = generate_batch(
            llm,
            table,
            prefix_ids,
            shared_cache,
            [suffixes[i] for i in batch],
            titles=[items[i].title for i in batch],
            excluded=[excluded[i] for i in batch],
            config=config,
        )
        for index, answer in zip(batch, answers, strict=True):
            texts[index] = answer
        if on_batch is not None:
            on_batch(len(batch))
    return texts


def _contradicting_values(
    item: ItemDescription, catalog_values: Mapping[str, Iterable[str]] | None, names: Sequence[str]
) -> frozenset[str]:
    if not catalog_values:
        return frozenset()
    contradicting: set[str] = set()
    for name in names:
        own = {clean_text(v) for v in item.attributes.get(name, ())}
        contradicting |= {clean_text(v) for v in catalog_values.get(name, ())} - own
    contradicting.discard("")
    return frozenset(contradicting)
