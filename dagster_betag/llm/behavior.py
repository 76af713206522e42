"""The behavior prompt: items written as their tags, the answer is the next item's tags.

Finetuning and BETag generation must see exactly the same format, so both build their
prompts here. A BETag prompt is the one-item case: the item's own base tags.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster_betag.llm.tags import format_tags

BEHAVIOR_PROMPT_VERSION = "behavior-v1"

INSTRUCTION = (
    "You are a helpful recommendation assistant tasked with predicting the next likely item "
    "based on user interactions. Given a sequence of previously interacted items, where each "
    "item is represented by multiple tags (comma-separated), predict the tags for the item the "
    "user is most likely to interact with next."
)


def next_item_messages(context_tags: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """Chat messages asking for the next item's tags after the items in ``context_tags``."""
    items = "\n".join(f"{position}. {format_tags(tags)}" for position, tags in enumerate(context_tags, start=1))
    return [{"role": "user", "content": f"{INSTRUCTION}\n\nItems:\n{items}\n\nNext item tags:"}]


def prompt_text(tokenizer, context_tags: Sequence[Sequence[str]]) -> str:
    """The generation prompt, through the model's chat template."""
    return tokenizer.apply_chat_template(next_item_messages(context_tags), add_generation_prompt=True, tokenize=False)


def answer_text(tokenizer, context_tags: Sequence[Sequence[str]], target_tags: Sequence[str]) -> str:
    """What the model should write after the prompt: the tags, then the template's end of turn."""
    prompt = prompt_text(tokenizer, context_tags)
    messages = [*next_item_messages(context_tags), {"role": "assistant", "content": format_tags(target_tags)}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the answer")
    return full[len(prompt) :]
