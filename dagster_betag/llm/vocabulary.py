"""The tag vocabulary: one canonical spelling per concept, junk dropped (library code, no Dagster).

A 135M model writes the same concept several ways ("comedies", "comedy", "sci-fi",
"science fiction") and writes a few tags for nearly every item ("love" on half of
MovieLens). Both hurt retrieval: variants split a concept's matches, and a tag on every item
matches every query. ``build_tag_map`` turns the raw base tags into a map raw tag -> canonical
tag (or None: junk), in this order:

1. spelling: hyphens and spaces unified ("sci-fi" -> "sci fi" when both occur), a plural last
   word singularized when the singular is itself a tag ("space movies" -> "space movie");
2. echoes: a tag made only of words of the instructions the model was given ("next item",
   "recommendation assistant") is the prompt talking back, not a property of the item;
3. semantic merge (TagGPT): tags embedded with the offline all-MiniLM-L6-v2, taken most
   frequent first; a tag whose cosine similarity to an already-kept tag is at least
   ``merge_threshold`` becomes that tag, else it is kept as a new canonical tag;
4. share: a canonical tag on more than ``max_item_share`` of the tagged items is junk.

The map is built once and then *extended*: ``TagMap.extended`` maps tags it has not seen
(new items of a catalog refresh) against the canonical tags already chosen, so existing
items' canonical tags do not move and their BETags stay valid.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from dagster_betag.hashing import stable_hash
from dagster_betag.knobs import knob
from dagster_betag.llm.tags import STOPWORDS

# (n_texts,) strings -> (n_texts, d) unit vectors, e.g. TextEncoder.encode
Encode = Callable[[Sequence[str]], np.ndarray]

KEPT, SPELLING, SEMANTIC, ECHO, TOO_COMMON = "kept", "spelling", "semantic", "echo", "too_common"

_WORD = re.compile(r"[^\W_]+")
# words whose final "s" is not a plural
_NOT_PLURAL = re.compile(r"(?:ss|us|is|ics|ous|ws)$")


@dataclass(frozen=True)
class VocabularyConfig:
    """Which cleaning steps run (each can be switched off to measure it)."""

    unify_spelling: bool = knob(
        True, "Unify hyphens and spaces, and singularize a plural last word when the singular is a tag."
    )
    drop_echoes: bool = knob(True, "Drop tags made only of words of the instructions the model was given.")
    merge_threshold: float | None = knob(
        0.9,
        "MiniLM cosine similarity at or above which a tag merges into an earlier, more frequent one (null: no "
        "semantic merge).",
    )
    max_item_share: float | None = knob(
        0.2, "A canonical tag on more than this share of the tagged items is dropped (null: keep all)."
    )
    min_items_for_share: int = knob(
        50, "max_item_share applies only from this many tagged items on, where a share means something."
    )


@dataclass(frozen=True)
class TagMapping:
    raw_tag: str
    canonical_tag: str | None  # None: dropped
    reason: str  # KEPT, SPELLING, SEMANTIC, ECHO or TOO_COMMON
    similarity: float  # cosine to the canonical tag (1 for spelling and kept)
    n_items: int  # tagged items with the raw tag


@dataclass
class TagMap:
    """raw tag -> canonical tag; ``apply`` rewrites one item's tag list."""

    mappings: dict[str, TagMapping] = field(default_factory=dict)
    echo_words: frozenset[str] = frozenset()

    def canonical(self, tag: str) -> str | None:
        """The canonical form of ``tag``; a tag the map has not seen only gets the spelling rules
        (against the canonical tags) and the echo filter."""
        known = self.mappings.get(tag)
        if known is not None:
            return known.canonical_tag
        if self.echo_words and is_echo(tag, self.echo_words):
            return None
        known_words, by_key = self._spellings
        known = by_key.get(spelling_key(tag, known_words))
        return known.canonical_tag if known is not None else tag

    def apply(self, tags: Iterable[str]) -> list[str]:
        """Canonical tags in first-appearance order, junk dropped, each once."""
        return list(dict.fromkeys(c for c in map(self.canonical, tags) if c is not None))

    def vocabulary(self, min_items: int = 1) -> list[str]:
        """The canonical tags on at least ``min_items`` items (counted over their raw spellings),
        most frequent first."""
        counts: Counter[str] = Counter()
        for mapping in self.mappings.values():
            if mapping.canonical_tag is not None:
                counts[mapping.canonical_tag] += mapping.n_items
        return [tag for tag, n in counts.most_common() if n >= min_items]

    def extended(
        self, tags_by_item: Mapping[str, Sequence[str]], config: VocabularyConfig, encode: Encode | None
    ) -> TagMap:
        """This map plus mappings for the raw tags it has not seen, merged into the existing
        canonical tags where close enough (existing mappings never change; the share rule is
        not applied again)."""
        unseen = {item: [t for t in tags if t not in self.mappings] for item, tags in tags_by_item.items()}
        if not any(unseen.values()):
            return self
        return _build(unseen, config, encode, self, drop_common=False)

    def vocabulary_id(self) -> str:
        """A short id of the canonical vocabulary (what constrained decoding is limited to)."""
        return stable_hash(sorted(self.vocabulary()), length=12)

    def write(self, path: Path, config_id: str) -> None:
        """One row per raw tag; ``config_id`` names the VocabularyConfig it was built with."""
        rows = list(self.mappings.values())
        pl.DataFrame(
            {
                "raw_tag": [m.raw_tag for m in rows],
                "canonical_tag": [m.canonical_tag for m in rows],
                "reason": [m.reason for m in rows],
                "similarity": [m.similarity for m in rows],
                "n_items": [m.n_items for m in rows],
                "config_id": [config_id] * len(rows),
            },
            schema={
                "raw_tag": pl.Utf8, "canonical_tag": pl.Utf8, "reason": pl.Utf8,
                "similarity": pl.Float64, "n_items": pl.Int64, "config_id": pl.Utf8,
            },  # fmt: skip
        ).write_parquet(path)

    @classmethod
    def read(cls, path: Path, instructions: Sequence[str] = ()) -> tuple[TagMap, str | None]:
        """The map stored at ``path`` and its config id (an empty map and None when there is none)."""
        if not path.exists():
            return cls(echo_words=instruction_words(instructions)), None
        frame = pl.read_parquet(path)
        mappings = {
            row["raw_tag"]: TagMapping(**{k: v for k, v in row.items() if k != "config_id"})
            for row in frame.iter_rows(named=True)
        }
        config_id = frame["config_id"][0] if frame.height else None
        return cls(mappings, instruction_words(instructions)), config_id

    @cached_property
    def _spellings(self) -> tuple[frozenset[str], dict[str, TagMapping]]:
        """The vocabulary's words and its mappings by spelling key (the map is not changed
        once built: ``extended`` returns a new one)."""
        known_words = _words(self.mappings)
        return known_words, self._by_key(known_words)

    def _by_key(self, known_words: frozenset[str]) -> dict[str, TagMapping]:
        return {
            spelling_key(raw, known_words): mapping for raw, mapping in self.mappings.items() if mapping.reason != ECHO
        }


def build_tag_map(
    tags_by_item: Mapping[str, Sequence[str]],
    config: VocabularyConfig = VocabularyConfig(),
    encode: Encode | None = None,
    *,
    instructions: Sequence[str] = (),
) -> TagMap:
    """The map of every raw tag of ``tags_by_item`` (item id -> raw tags). ``encode`` embeds
    tags for the semantic merge (needed when ``config.merge_threshold`` is set); ``instructions``
    are the texts the model was prompted with, whose words make the echo filter."""
    echo_words = instruction_words(instructions) if config.drop_echoes else frozenset()
    return _build(tags_by_item, config, encode, TagMap(echo_words=echo_words), drop_common=True)


def _build(
    tags_by_item: Mapping[str, Sequence[str]],
    config: VocabularyConfig,
    encode: Encode | None,
    base: TagMap,
    *,
    drop_common: bool,
) -> TagMap:
    n_items = Counter(tag for tags in tags_by_item.values() for tag in dict.fromkeys(tags))
    mappings = dict(base.mappings)
    known_words = _words([*n_items, *base.mappings])
    # step 1-2: spelling variants share a key; the key's most frequent raw spelling speaks for it
    by_key: dict[str, list[str]] = {}
    for tag in sorted(n_items, key=lambda t: (-n_items[t], t)):
        if base.echo_words and is_echo(tag, base.echo_words):
            mappings[tag] = TagMapping(tag, None, ECHO, 1.0, n_items[tag])
            continue
        by_key.setdefault(spelling_key(tag, known_words) if config.unify_spelling else tag, []).append(tag)
    existing = base._by_key(known_words) if config.unify_spelling else {}
    heads: dict[str, str] = {}  # key -> the raw tag that represents it in the merge
    for key, spellings in by_key.items():
        if key in existing:  # a spelling of a canonical tag chosen before
            for tag in spellings:
                target = existing[key]
                mappings[tag] = TagMapping(tag, target.canonical_tag, SPELLING, 1.0, n_items[tag])
            continue
        heads[key] = spellings[0]
        for tag in spellings[1:]:
            mappings[tag] = TagMapping(tag, spellings[0], SPELLING, 1.0, n_items[tag])
    key_items = {key: sum(n_items[t] for t in by_key[key]) for key in heads}
    # step 3: greedy merge, most frequent first, against every canonical tag kept so far
    order = sorted(heads, key=lambda key: (-key_items[key], heads[key]))
    kept = [m.canonical_tag for m in base.mappings.values() if m.reason == KEPT]
    merged_into = _greedy_merge([heads[key] for key in order], kept, config.merge_threshold, encode)
    for key in order:
        head = heads[key]
        target, similarity = merged_into[head]
        reason = KEPT if target == head else SEMANTIC
        mappings[head] = TagMapping(head, target, reason, similarity, n_items[head])
        for tag in by_key[key][1:]:
            mappings[tag] = TagMapping(tag, target, SPELLING if reason == KEPT else SEMANTIC, similarity, n_items[tag])
    # step 4: canonical tags on too many items are junk (decided when the map is built, not
    # when it is extended by a few new items)
    result = TagMap(mappings, base.echo_words)
    if drop_common and config.max_item_share is not None and len(tags_by_item) >= config.min_items_for_share:
        canonical_items = Counter(
            tag for tags in tags_by_item.values() for tag in dict.fromkeys(result.apply(tags))
        )
        too_common = {tag for tag, n in canonical_items.items() if n > config.max_item_share * len(tags_by_item)}
        for raw, mapping in mappings.items():
            if mapping.canonical_tag in too_common:
                mappings[raw] = TagMapping(raw, None, TOO_COMMON, mapping.similarity, mapping.n_items)
    return result


def _greedy_merge(
    tags: Sequence[str], kept: Sequence[str], threshold: float | None, encode: Encode | None
) -> dict[str, tuple[str, float]]:
    """tag -> (canonical tag, cosine): each tag, in the given order, joins the most similar
    earlier canonical tag (``kept`` first) when the cosine reaches ``threshold``, else is kept."""
    if threshold is None or not tags:
        return {tag: (tag, 1.0) for tag in tags}
    if encode is None:
        raise ValueError("a semantic merge (merge_threshold) needs an encoder")
    vectors = encode([*kept, *tags])  # (n_kept + n_tags, d) unit rows
    canonical = list(kept)
    canonical_rows = list(range(len(kept)))
    result: dict[str, tuple[str, float]] = {}
    for offset, tag in enumerate(tags):
        row = len(kept) + offset
        if canonical_rows:
            similarities = vectors[canonical_rows] @ vectors[row]  # (n_canonical,)
            best = int(np.argmax(similarities))
            if similarities[best] >= threshold:
                result[tag] = (canonical[best], float(similarities[best]))
                continue
        canonical.append(tag)
        canonical_rows.append(row)
        result[tag] = (tag, 1.0)
    return result


def spelling_key(tag: str, known_words: frozenset[str] = frozenset()) -> str:
    """The form shared by spelling variants: hyphens as spaces, the last word singular."""
    words = tag.replace("-", " ").split()
    if not words:
        return tag
    return " ".join([*words[:-1], singular(words[-1], known_words)])


def singular(word: str, known_words: frozenset[str] = frozenset()) -> str:
    """A rule-based English singular ("comedies" -> "comedy", "heroes" -> "hero", "boxes" ->
    "box"); words whose final s is no plural ("thriller" "chess" "genius" "politics") stay.
    Where the rules are ambiguous ("movies": "movy" or "movie"?), a form among ``known_words``
    (the words of the vocabulary) wins."""
    if len(word) <= 3 or not word.endswith("s") or _NOT_PLURAL.search(word):
        return word
    if word[:-1] in known_words:  # "movies" -> "movie", "shoes" -> "shoe"
        return word[:-1]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "oes")):
        return word[:-2]
    return word[:-1]


def _words(tags) -> frozenset[str]:
    return frozenset(word for tag in tags for word in tag.replace("-", " ").split())


def instruction_words(instructions: Sequence[str]) -> frozenset[str]:
    """The content words of the instructions a model was prompted with."""
    return frozenset(w for text in instructions for w in _WORD.findall(text.lower()) if w not in STOPWORDS)


def is_echo(tag: str, echo_words: frozenset[str]) -> bool:
    """Whether every content word of ``tag`` comes from the instructions (and there are two or
    more: one instruction word alone, say "story", can be a fine tag)."""
    words = [w for w in _WORD.findall(tag) if w not in STOPWORDS]
    return len(words) >= 2 and all(w in echo_words for w in words)
