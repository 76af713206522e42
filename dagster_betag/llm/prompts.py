"""The base-tag prompt: an item's structured fields in, chat messages asking for N tags out.

Library code (no Dagster)::

    item = ItemDescription.from_row(row)              # a row of marts.dim_items, as a dict
    messages = base_tag_messages(item, DEFAULT_FEW_SHOT, num_tags=8)
    text = base_tag_prompt(tokenizer, item, DEFAULT_FEW_SHOT, num_tags=8)

The prompt is a short system message, one user/assistant turn per few-shot example, then the
item's user turn. Every structured field is used: title, attributes (year, genres, ...) and the
description when there is one. The answer format is a numbered list, one tag per line.

``BASE_TAG_PROMPT_VERSION`` names the prompt: bump it whenever the text or the default
few-shot set changes, since stored base tags are keyed on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BASE_TAG_PROMPT_VERSION = "base-v1"

# longer descriptions are cut (at a word boundary) to keep prompts, and so batches, short
MAX_DESCRIPTION_CHARS = 600
# attributes shown first, in this order; the others follow alphabetically
_ATTRIBUTE_ORDER = ("year", "genre", "genres", "category", "categories", "brand")


@dataclass(frozen=True)
class ItemDescription:
    """What the LLM is told about an item: its title, optional description and attributes."""

    item_id: str
    title: str
    description: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ItemDescription:
        """An item from a row of ``marts.dim_items`` (a mapping of column name to value).

        ``attributes`` may arrive as a dict (DuckDB's MAP), as ``{"key": [...], "value": [...]}``
        (older DuckDB clients) or as a list of ``{"key", "value"}`` pairs; values may be lists
        or scalars. Missing or null columns become empty.
        """
        return cls(
            item_id=str(row["item_id"]),
            title=str(row.get("title") or "").strip(),
            description=_blank_to_none(row.get("description")),
            attributes=_attribute_dict(row.get("attributes")),
        )


# Hand-written examples: themes, mood, setting and style, not just the genres.
DEFAULT_FEW_SHOT: tuple[tuple[ItemDescription, list[str]], ...] = (
    (
        ItemDescription(
            item_id="example-1",
            title="Jurassic Park",
            attributes={"year": ["1993"], "genre": ["Action", "Adventure", "Sci-Fi", "Thriller"]},
        ),
        [
            "dinosaurs",
            "theme park",
            "genetic engineering",
            "island",
            "man versus nature",
            "suspenseful",
            "groundbreaking effects",
            "family adventure",
            "chaos theory",
            "survival",
        ],
    ),
    (
        ItemDescription(
            item_id="example-2",
            title="Titanic",
            attributes={"year": ["1997"], "genre": ["Drama", "Romance"]},
        ),
        [
            "shipwreck",
            "doomed romance",
            "class differences",
            "1910s",
            "ocean liner",
            "tragedy",
            "epic",
            "tearjerker",
            "based on true events",
            "disaster",
        ],
    ),
    (
        ItemDescription(
            item_id="example-3",
            title="Groundhog Day",
            attributes={"year": ["1993"], "genre": ["Comedy", "Fantasy", "Romance"]},
        ),
        [
            "time loop",
            "small town",
            "winter",
            "self-improvement",
            "second chances",
            "witty",
            "feel-good",
            "romantic comedy",
            "cynical hero",
            "existential",
        ],
    ),
)


def describe_item(item: ItemDescription, *, max_description_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """The item's fields as "Label: value" lines, redundant ones left out."""
    lines = [f"Title: {item.title}"]
    for key in _ordered_keys(item.attributes):
        values = [v.strip() for v in item.attributes[key] if _shown_value(v)]
        values = [v for v in values if not _restates_title(v, item.title)]
        if values:
            lines.append(f"{_label(key)}: {', '.join(dict.fromkeys(values))}")
    if item.description:
        lines.append(f"Description: {_shorten(item.description, max_description_chars)}")
    return "\n".join(lines)


def base_tag_messages(
    item: ItemDescription,
    few_shot: Sequence[tuple[ItemDescription, list[str]]] = DEFAULT_FEW_SHOT,
    *,
    num_tags: int = 8,
    item_noun: str = "movie",
) -> list[dict[str, str]]:
    """Chat messages asking for ``num_tags`` tags of ``item`` as a numbered list.

    ``few_shot`` pairs become prior user/assistant turns (each showing its first ``num_tags``
    tags); pass a catalog's own set, and its ``item_noun`` ("product", "book"...), for another
    catalog.
    """
    messages = [{"role": "system", "content": _system_text(item_noun)}]
    for example, tags in few_shot:
        messages.append({"role": "user", "content": _request(example, num_tags, item_noun)})
        numbered = "\n".join(f"{i}. {tag}" for i, tag in enumerate(list(tags)[:num_tags], start=1))
        messages.append({"role": "assistant", "content": numbered})
    messages.append({"role": "user", "content": _request(item, num_tags, item_noun)})
    return messages


def base_tag_prompt(
    tokenizer,
    item: ItemDescription,
    few_shot: Sequence[tuple[ItemDescription, list[str]]] = DEFAULT_FEW_SHOT,
    *,
    num_tags: int = 8,
    item_noun: str = "movie",
) -> str:
    """The base-tag messages rendered with the tokenizer's chat template, ready to generate."""
    messages = base_tag_messages(item, few_shot, num_tags=num_tags, item_noun=item_noun)
    return apply_chat(tokenizer, messages)


def apply_chat(tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """Render messages with the chat template (tokenize=False), or a plain fallback without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def catalog_few_shot(
    rows: Sequence[Mapping[str, Any]], num_tags: int
) -> tuple[tuple[ItemDescription, list[str]], ...]:
    """Few-shot examples from the catalog itself: each row (a ``dim_items`` row with its
    ``native_tags``, as ``warehouse.natively_tagged_items`` gives) becomes an example answered
    with its first ``num_tags`` human tags that parse as tags (title echoes dropped)."""
    from dagster_betag.llm.tags import parse_tags

    examples = []
    for row in rows:
        item = ItemDescription.from_row(row)
        tags = parse_tags("\n".join(row["native_tags"]), echoes=[item.title], max_tags=num_tags)
        if tags:
            examples.append((item, tags))
    return tuple(examples)


def instruction_texts(item_noun: str = "movie") -> list[str]:
    """The instruction text of the base-tag prompt, without any item (what an echo repeats)."""
    return [_system_text(item_noun), f"Write different tags for this {item_noun}, as a numbered list."]


def _system_text(item_noun: str) -> str:
    return (
        f"You tag {item_noun}s for a recommender system. A tag is a short lowercase phrase of one to three "
        f"words about the {item_noun}'s themes, mood, setting or style. Never repeat a tag or the title."
    )


def _request(item: ItemDescription, num_tags: int, item_noun: str) -> str:
    # the instruction comes first: the text every prompt shares up to the item's title is
    # computed once per batch (see base_tags), and the small model follows it as well there
    return f"Write {num_tags} different tags for this {item_noun}, as a numbered list.\n\n{describe_item(item)}"


def _label(key: str) -> str:
    words = key.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _ordered_keys(attributes: Mapping[str, Sequence[str]]) -> list[str]:
    first = [k for k in _ATTRIBUTE_ORDER if k in attributes]
    return first + sorted(k for k in attributes if k not in first)


def _shown_value(value: Any) -> bool:
    text = str(value).strip() if value is not None else ""
    # MovieLens writes "(no genres listed)": a placeholder, not a value
    return bool(text) and not (text.startswith("(") and text.endswith(")"))


def _restates_title(value: str, title: str) -> bool:
    """True for values such as "Toy Story (1995)" or "American President, The (1995)"."""

    def canonical(text: str) -> str:
        text = re.sub(r"\s*\(\d{4}\)\s*$", "", text.strip())
        article = re.match(r"^(.*), (the|a|an|les|la|le|el|il|der|die|das)$", text, flags=re.IGNORECASE)
        if article:
            text = f"{article.group(2)} {article.group(1)}"
        return " ".join(text.lower().split())

    return canonical(value) == canonical(title)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def _blank_to_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _attribute_dict(value: Any) -> dict[str, list[str]]:
    if value is None:
        return {}
    if isinstance(value, Mapping) and set(value) == {"key", "value"} and isinstance(value["key"], list):
        pairs = zip(value["key"], value["value"], strict=False)
    elif isinstance(value, Mapping):
        pairs = value.items()
    elif isinstance(value, list):
        pairs = ((entry["key"], entry["value"]) for entry in value if isinstance(entry, Mapping))
    else:
        return {}
    attributes: dict[str, list[str]] = {}
    for key, values in pairs:
        if key is None or values is None:
            continue
        listed = list(values) if isinstance(values, (list, tuple)) else [values]
        attributes[str(key)] = [str(v) for v in listed if v is not None]
    return attributes
