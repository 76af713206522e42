"""The behavior prompt: items written as their tags (or title and tags), the answer is the next item's tags.

Finetuning and BETag generation must see exactly the same format, so both build their
prompts here. A BETag prompt is the one-item case: the item's own base tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dagster_betag.llm.tags import format_tags

INSTRUCTION = (
    "You are a helpful recommendation assistant tasked with predicting the next likely item "
    "based on user interactions. Given a sequence of previously interacted items, where each "
    "item is represented by multiple tags (comma-separated), predict the tags for the item the "
    "user is most likely to interact with next."
)


@dataclass(frozen=True)
class ItemWriting:
    """How the behavior prompt writes an item; ``prompt_version`` names the prompt format in
    adapter manifests and BETag run keys, so an adapter is prompted as it was trained."""

    name: str
    prompt_version: str
    with_title: bool
    description: str


# the closed list of item writings: the finetuning knob, adapter manifests and BETag run keys read it
ITEM_WRITINGS = {
    writing.name: writing
    for writing in (
        ItemWriting("tags", "behavior-v1", False, "its base tags: '1. toys, friendship'"),
        ItemWriting(
            "title_and_tags",
            "behavior-v2-title",
            True,
            "its title, then its base tags: '1. Toy Story: toys, friendship' (items with similar tags stay apart)",
        ),
    )
}
DEFAULT_ITEM_WRITING = "tags"


def item_writing_named(name: str) -> ItemWriting:
    if name not in ITEM_WRITINGS:
        raise ValueError(f"unknown item writing {name!r}; use one of {', '.join(ITEM_WRITINGS)}")
    return ITEM_WRITINGS[name]


def next_item_messages(
    context_tags: Sequence[Sequence[str]], titles: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """Chat messages asking for the next item's tags after the items in ``context_tags``
    (each written ``<title>: <tags>`` when ``titles``, aligned with them, are given)."""
    named = titles if titles is not None else [None] * len(context_tags)
    items = "\n".join(
        f"{position}. {f'{title}: ' if title else ''}{format_tags(tags)}"
        for position, (title, tags) in enumerate(zip(named, context_tags, strict=True), start=1)
    )
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nItems:\n{items}\n\nNext item tags:"}]


def prompt_text(tokenizer, context_tags: Sequence[Sequence[str]], titles: Sequence[str] | None = None) -> str:
    """The generation prompt, through the model's chat template."""
    messages = next_item_messages(context_tags, titles)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_text(
    tokenizer, context_tags: Sequence[Sequence[str]], target_tags: Sequence[str], titles: Sequence[str] | None = None
) -> str:
    """What the model should write after the prompt: the tags, then the template's end of turn."""
    prompt = prompt_text(tokenizer, context_tags, titles)
    messages = [*next_item_messages(context_tags, titles), {"role": "assistant", "content": format_tags(target_tags)}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the answer")
    return full[len(prompt) :]
