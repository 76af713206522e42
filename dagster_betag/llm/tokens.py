"""What each vocabulary token is, for the logits rules that follow written text token by
token without decoding it (library code, no Dagster).

``token_table(tokenizer)`` decodes every token once (about a second for 50k tokens) and
keeps the sets the rules ban or look up: separators, list markers, word starts, uppercase
and digit-led tokens, and the tokens of each word. ``end_of_turn_ids`` are the tokens that
end an answer.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field

import torch

# a complete list marker: after it, the entry's content starts, even with a digit ("2. 1940s")
COMPLETE_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|[-*•·])\s*$")
# tokens that can be part of a list marker
_MARKER_TEXT = re.compile(r"^[\s\d.)(:#*•·\-–—+>]*$")
_SEPARATOR_CHARS = ("\n", ",", ";", "|")


@dataclass
class TokenTable:
    """What each vocabulary token is, for following list entries without decoding."""

    texts: list[str]  # (V,) each token decoded alone
    is_separator: list[bool]  # (V,) contains a list separator (newline, comma, semicolon, pipe)
    is_marker: list[bool]  # (V,) digits, list punctuation and spaces only
    starts_word: list[bool]  # (V,) begins with a space
    separator_ids: torch.Tensor  # (n,) long
    upper_ids: torch.Tensor  # (n,) long: tokens with an uppercase letter
    digit_start_ids: torch.Tensor  # (n,) long: tokens whose text starts (after spaces) with a digit
    blank_ids: torch.Tensor  # (n,) long: whitespace-only tokens and separators, what cannot follow "2."
    ids_by_word: dict[str, list[int]] = field(repr=False)  # word key -> tokens with that key


def word_key(text: str) -> str:
    """The key a token (or an entry's first token) is compared by: its text, stripped, lowercase."""
    return text.strip().lower()


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_table(tokenizer) -> TokenTable:
    """The tokenizer's TokenTable, built once per tokenizer (about a second for 50k tokens)."""
    try:
        cached = _TABLES.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    is_separator = [any(c in t for c in _SEPARATOR_CHARS) for t in texts]
    is_marker = [not sep and bool(_MARKER_TEXT.match(t)) for t, sep in zip(texts, is_separator, strict=True)]
    ids_by_word: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        key = word_key(text)
        if i not in special and key and any(c.isalnum() for c in key):
            ids_by_word.setdefault(key, []).append(i)

    def ids(condition) -> torch.Tensor:
        return torch.tensor([i for i, t in enumerate(texts) if i not in special and condition(i, t)], dtype=torch.long)

    table = TokenTable(
        texts=texts,
        is_separator=is_separator,
        is_marker=is_marker,
        starts_word=[t[:1].isspace() for t in texts],
        separator_ids=ids(lambda i, t: is_separator[i]),
        upper_ids=ids(lambda i, t: any(c.isupper() for c in t)),
        digit_start_ids=ids(lambda i, t: t.strip()[:1].isdigit()),
        blank_ids=ids(lambda i, t: bool(t) and (not t.strip() or is_separator[i])),
        ids_by_word=ids_by_word,
    )
    try:
        _TABLES[tokenizer] = table
    except TypeError:
        pass
    return table


def end_of_turn_ids(llm) -> list[int]:
    """The tokens that end an answer: the generation config's and tokenizer's eos, and ChatML's <|im_end|>."""
    ids: set[int] = set()
    configured = llm.model.generation_config.eos_token_id
    for value in configured if isinstance(configured, list) else [configured]:
        if value is not None:
            ids.add(int(value))
    if llm.tokenizer.eos_token_id is not None:
        ids.add(int(llm.tokenizer.eos_token_id))
    end_of_turn = llm.tokenizer.get_vocab().get("<|im_end|>")
    if end_of_turn is not None:
        ids.add(int(end_of_turn))
    return sorted(ids)
