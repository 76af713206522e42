"""Tag text: parse what an LLM wrote into a clean list of tags, and write a list back.

Library code (no Dagster, no torch)::

    parse_tags("1. Toys come to life\\n2. Friendship\\n3. Toy Story", echoes=["Toy Story"])
    # -> ["toys come to life", "friendship"]
    format_tags(["toys come to life", "friendship"])  # -> "toys come to life, friendship"

A tag is lowercase NFKC text, single-spaced, with no list marker, leading article ("the",
"a", "an"), surrounding punctuation or quotes; it has at most ``max_words`` words and
``max_chars`` characters, is mostly letters, and is not an instruction echo (``ECHO_TAGS``,
``ECHO_PREFIXES``) nor only stopwords. Tags never contain a list separator (comma, semicolon,
pipe, newline), so ``parse_tags(format_tags(tags)) == tags`` for any parsed list.

Singular/plural unification is not done here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Tags that are the prompt talking back, not a property of the item: exact matches after
# cleaning (which has already dropped a leading article, so "the movie" is "movie"). Kept
# small on purpose: a word such as "comedy" is a good tag.
ECHO_TAGS: frozenset[str] = frozenset(
    {
        # the request itself
        "tag", "tags", "item", "items", "keyword", "keywords", "list", "answer", "example", "examples",
        "title", "titles", "description", "descriptions", "genre", "genres", "year", "attributes",
        "original title", "short tags", "descriptive tags", "tags for", "more tags",
        # the catalog's noun (a tag that only says what kind of item it is says nothing)
        "movie", "movies", "film", "films", "product", "products",
        # chat filler the 135M model emits
        "sure", "yes", "no", "okay", "ok", "thanks", "thank you", "hello", "hi", "user", "assistant",
        "none", "n/a", "na", "unknown", "other", "etc", "and more", "and so on",
        "what do you think", "i hope this helps", "let me know",
    }
)
# A tag made only of these words says nothing ("the", "of the").
STOPWORDS: frozenset[str] = frozenset(
    "a an the of in on at to for and or with from by is it its this that as".split()
)
# Tags starting with these are sentences addressed to the user, not tags.
ECHO_PREFIXES: tuple[str, ...] = (
    "here are", "here is", "here's", "what do you", "i think", "i hope", "let me", "tags for",
    "tags:", "sure,", "as an ai", "note:", "the tags",
)

_HARD_SEPARATORS = re.compile(r"[,;|\n\r\t\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e]")
# an inline numbered-list marker after text: "a 2. b", "a 3) b"
_INLINE_NUMBER = re.compile(r"(?<=\S)\s+\(?\d{1,2}[.)]\s+")
# list markers at the start: "1.", "1)", "(1)", "#1", "-", "*", "•", "·", ">" and the like
_LEADING_MARKER = re.compile(r"^(?:\(?\d{1,3}[.):]+(?!\d)|#\d+[.):]?|[-*•·‣◦▪●○■□►▶>+~–—]+)\s*")
# a label in front of the list: "tags: a, b"
_LEADING_LABEL = re.compile(r"^(?:tags?|keywords?|answer)\s*:\s*")
_TRAILING_ARTICLE = re.compile(r"^(.*?),\s*(?:the|a|an)$", re.IGNORECASE)
# "the hero" and "hero" are one tag
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an) (?=\S)")
_DECADE = re.compile(r"^(?:\d{2}|\d{4})s$")
_SPACES = re.compile(r"\s+")


def format_tags(tags: Iterable[str]) -> str:
    """The canonical way a tag list is written into prompts and tables: comma-separated."""
    return ", ".join(tags)


def normalize_tag(raw: str, *, min_chars: int = 2, max_chars: int = 40, max_words: int = 4) -> str | None:
    """One clean tag, or None when ``raw`` is no tag (empty, too long, junk or an echo)."""
    tag = clean_text(raw)
    if not tag or _HARD_SEPARATORS.search(tag) or _INLINE_NUMBER.search(tag):
        return None
    if len(tag) < min_chars or len(tag) > max_chars or len(tag.split(" ")) > max_words:
        return None
    if tag in ECHO_TAGS or tag.startswith(ECHO_PREFIXES) or all(w in STOPWORDS for w in tag.split(" ")):
        return None
    if not _mostly_letters(tag):
        return None
    if clean_text(tag) != tag:  # guard: a tag must be a fixed point, so that parsing is idempotent
        return None
    return tag


def clean_text(raw: str) -> str:
    """Lowercase NFKC text, single-spaced, without list markers or surrounding punctuation.

    The cleaning half of ``normalize_tag`` with none of its filters (for comparing titles).
    """
    text = raw if isinstance(raw, str) else str(raw)
    for _ in range(8):
        previous = text
        text = unicodedata.normalize("NFKC", text).lower()
        text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in "\n\t")
        text = _SPACES.sub(" ", text).strip()
        text = _LEADING_MARKER.sub("", text)
        text = _LEADING_LABEL.sub("", text)
        text = _LEADING_ARTICLE.sub("", text)
        text = _strip_edges(text)
        if text == previous:
            break
    return text


def parse_tags(text: str, *, echoes: Iterable[str] = (), max_tags: int | None = None) -> list[str]:
    """The distinct tags in an LLM answer, in order; never raises.

    Splits numbered lists ("1. a", "1) a"), bullets ("- a", "* a", "• a"), commas,
    semicolons, pipes and newlines; normalizes each piece; drops echoes (each of ``echoes``,
    typically the item's title and prompt fragments, compared after cleaning, also without a
    trailing "(...)" such as a year); keeps the first ``max_tags``.
    """
    try:
        return _parse(text, echoes, max_tags)
    except Exception:  # noqa: BLE001 - a parser in a batch pipeline must not take the batch down
        return []


def _parse(text: str, echoes: Iterable[str], max_tags: int | None) -> list[str]:
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if max_tags is not None and max_tags <= 0:
        return []
    echo_set = echo_forms(echoes)
    text = unicodedata.normalize("NFKC", text)
    tags: list[str] = []
    seen: set[str] = set()
    for piece in split_entries(text):
        tag = normalize_tag(piece)
        if tag is None or tag in seen or tag in echo_set:
            continue
        seen.add(tag)
        tags.append(tag)
        if max_tags is not None and len(tags) >= max_tags:
            break
    return tags


def split_entries(text: str) -> list[str]:
    """The raw list entries of an answer (before normalization)."""
    pieces: list[str] = []
    for chunk in _HARD_SEPARATORS.split(text):
        pieces.extend(_INLINE_NUMBER.split(chunk))
    return [piece for piece in pieces if piece.strip()]


def split_open_entry(text: str) -> tuple[list[str], str]:
    """The finished entries of a partly written answer, and the entry still being written
    ("" right after a separator): ``"love, family, fam"`` -> ``(["love", " family"], " fam")``."""
    *finished, current = split_entries(text + "\x00")  # the sentinel keeps an empty open entry
    return finished, current[:-1]


def echo_forms(echoes: Iterable[str]) -> set[str]:
    """The cleaned forms under which each echo is recognized as a tag.

    Each echo cleaned (which drops a leading article), also without a trailing "(...)" such as
    a year, and without a trailing ", The" (MovieLens writes "Matrix, The (1999)").
    """
    forms: set[str] = set()
    for echo in echoes or ():
        if not isinstance(echo, str) or not echo.strip():
            continue
        forms.add(clean_text(echo))
        without_parenthesis = re.sub(r"\s*\([^()]*\)\s*$", "", echo.strip())
        forms.add(clean_text(without_parenthesis))
        # "Matrix, The (1999)": the catalog form of "The Matrix" (whose clean text is "matrix")
        article_last = _TRAILING_ARTICLE.match(without_parenthesis)
        if article_last:
            forms.add(clean_text(article_last.group(1)))
    forms.discard("")
    return forms


def _strip_edges(text: str) -> str:
    """Drop leading and trailing characters that are neither letters nor digits."""
    start, end = 0, len(text)
    while start < end and not _keep_at_edge(text[start]):
        start += 1
    while end > start and not _keep_at_edge(text[end - 1]):
        end -= 1
    return text[start:end].strip()


def _keep_at_edge(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def _mostly_letters(tag: str) -> bool:
    if _DECADE.match(tag):
        return True
    visible = [ch for ch in tag if not ch.isspace()]
    letters = sum(1 for ch in visible if unicodedata.category(ch)[0] == "L")
    return letters >= 2 and letters * 2 >= len(visible)
