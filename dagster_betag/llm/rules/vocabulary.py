"""The vocabulary rule: BETag beams may only write tags of a fixed vocabulary.

An answer is ``format_tags(tags)`` then an end-of-turn token: "dark comedy, heist, 1970s<|im_end|>". With the
SmolLM2 tokenizer (GPT-2 style pre-tokenization splits at punctuation and before a space-word) the comma is one
token of its own, so the ids of an answer are the ids of its first tag tokenized alone ("dark" " comedy"), then
for every later tag the comma and the tag's ids as they come after ", " (" he" "ist"; " " "1" "9" "7" "0" "s").
A tag thus has two token paths, one for the first entry and one after a separator; ``TagTrie`` keeps both, and
``VocabularyConstraint`` lets a beam write only tokens that stay on a path, close an entry only on a whole tag it
has not written yet, and never enter a branch whose tags it has all written.

Usage, once per vocabulary and once per batch (the prompt length changes)::

    trie = tag_trie(tokenizer, vocabulary)  # cached per tokenizer and vocabulary
    rules = chain_rules(BeamTagRules(...), VocabularyConstraint(trie, eos_ids, input_ids.shape[1]))
    diverse_beam_search(..., logits_processor=rules)
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


SEPARATOR = ","  # what `format_tags` puts between tags, before the space that belongs to the next tag's tokens


@dataclass(eq=False)
class TrieNode:
    """A token prefix of one or more tags (in one context: first entry, or after a separator)."""

    tag: str | None = None  # the tag these tokens spell out whole, if any
    below: dict[int, int] = field(default_factory=dict)  # next token -> number of tags that go through it
    _next_ids: np.ndarray | None = field(default=None, repr=False)

    def next_ids(self) -> np.ndarray:
        """(children,) int64, the tokens that continue some tag; made once, since the processor needs them for
        every row at every step."""
        if self._next_ids is None:
            self._next_ids = np.fromiter(sorted(self.below), dtype=np.int64, count=len(self.below))
        return self._next_ids


class TagTrie:
    """The token paths of a tag vocabulary, keyed by prefix: ``first[ids]`` for the answer's first entry (the tag
    tokenized alone), ``later[ids]`` for an entry after the separator (the tag tokenized after ", ").

    Tags are taken as given (normalized lowercase text, duplicates ignored). A tag whose tokens do not decode
    back to it, or that contains the separator or a special token, could not be read back from an answer: it is
    left out and listed in ``dropped``.
    """

    def __init__(self, tokenizer, tags: Iterable[str]):
        separator = tokenizer(SEPARATOR, add_special_tokens=False).input_ids
        if len(separator) != 1:
            raise ValueError(f"the tokenizer splits {SEPARATOR!r} into {len(separator)} tokens, expected one")
        self.separator_id: int = separator[0]
        self.first: dict[tuple[int, ...], TrieNode] = {(): TrieNode()}
        self.later: dict[tuple[int, ...], TrieNode] = {(): TrieNode()}
        self.paths: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # tag -> (first, later) token ids
        wanted = [tag for tag in dict.fromkeys(tags) if tag]
        dropped: list[str] = []
        for tag, first, later in zip(wanted, *self._tokenize(tokenizer, wanted), strict=True):
            if first is None or later is None:
                dropped.append(tag)
                continue
            self.paths[tag] = (first, later)
            self._insert(self.first, first, tag)
            self._insert(self.later, later, tag)
        self.tags: tuple[str, ...] = tuple(self.paths)
        self.dropped: tuple[str, ...] = tuple(dropped)

    def _tokenize(self, tokenizer, tags: list[str]) -> tuple[list, list]:
        """Each tag's ids alone and after ", " (separator left out), None where they do not reproduce the tag."""
        if not tags:
            return [], []
        alone = tokenizer(tags, add_special_tokens=False).input_ids
        after = tokenizer([f"{SEPARATOR} {tag}" for tag in tags], add_special_tokens=False).input_ids
        after = [ids[1:] if ids[:1] == [self.separator_id] else [] for ids in after]
        texts = tokenizer.batch_decode(alone + after, clean_up_tokenization_spaces=False)
        expected = tags + [f" {tag}" for tag in tags]
        special = {self.separator_id, *tokenizer.all_special_ids}  # an EOS inside a tag would end the answer
        paths = [
            tuple(ids) if ids and text == want and special.isdisjoint(ids) else None
            for ids, text, want in zip(alone + after, texts, expected, strict=True)
        ]
        return paths[: len(tags)], paths[len(tags) :]

    @staticmethod
    def _insert(nodes: dict[tuple[int, ...], TrieNode], path: tuple[int, ...], tag: str) -> None:
        for end in range(len(path)):
            node = nodes.setdefault(path[:end], TrieNode())
            node.below[path[end]] = node.below.get(path[end], 0) + 1
        nodes.setdefault(path, TrieNode()).tag = tag

    def node(self, prefix: Sequence[int], first: bool) -> TrieNode | None:
        """The node of an entry's tokens so far; None when they leave every tag."""
        return (self.first if first else self.later).get(tuple(prefix))

    def path(self, tag: str, first: bool) -> tuple[int, ...]:
        return self.paths[tag][0 if first else 1]


_TRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tag_trie(tokenizer, tags: Iterable[str]) -> TagTrie:
    """The trie of ``tags``, kept for the tokenizer's last vocabulary: per-batch callers reuse one trie (0.4 s to
    build for 5,000 tags here) and the id arrays its nodes have made."""
    key = frozenset(tags)
    try:
        cached = _TRIES.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced is not cached
        return TagTrie(tokenizer, sorted(key))
    if cached is None or cached[0] != key:
        cached = _TRIES[tokenizer] = (key, TagTrie(tokenizer, sorted(key)))
    return cached[1]


class VocabularyConstraint:
    """A ``LogitsRule``: each beam writes tags of the trie's vocabulary, each at most once, then ends.

    Per row, the generated tokens (after ``prompt_length``) are split at the separator token; the entries before
    the last separator are the written tags, the tokens after it the open entry. Allowed: the tokens that keep
    the open entry on a tag's path, except those whose every tag below is written already; the separator and
    EOS when the open entry is a whole tag not yet written. Allowed tokens keep their log-probs, the others get
    -inf. A row left with no finite log-prob gets its EOS log-probs back, so that it ends rather than running
    on at -inf: a row off the trie (tokens forced from outside, or beams of a finished group, which the beam
    search ignores anyway), an exhausted vocabulary, or a processor before this one that left only EOS
    (``BeamTagRules``' tag cap, after a separator).

    Stateless like ``BeamTagRules``: it re-reads every row at every step, because beams are reordered between
    steps.
    """

    def __init__(self, trie: TagTrie, eos_ids: Sequence[int], prompt_length: int):
        self.trie = trie
        self.eos = sorted(set(eos_ids))
        self.ends = np.array(sorted({trie.separator_id, *eos_ids}), dtype=np.int64)
        self.prompt_length = prompt_length

    def __call__(self, sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """(rows, P + t) prompt + generated ids, (rows, V) log-probs -> (rows, V), in place where ``log_probs``
        is contiguous (as transformers' processors and ``LowercaseOnly`` work).

        The allowed (row, token) pairs are gathered on the CPU as flat indices into (rows, V); their log-probs
        are saved, the rows filled with -inf and the saved values put back. In place, because a fresh (rows, V)
        output costs its page faults at every step: 24 ms against 3 ms for the fill of 256 rows on one CPU thread
        here; a boolean mask and ``masked_fill`` cost more still."""
        rows, vocab = log_probs.shape
        options = [self._options(ids) for ids in sequences[:, self.prompt_length :].tolist()]
        children = [next_ids for next_ids, _ in options]
        ending = np.flatnonzero([can_end for _, can_end in options])  # (rows that may end their entry,)
        row_ids = [np.repeat(np.arange(rows), [len(ids) for ids in children]), ending.repeat(len(self.ends))]
        token_ids = [*children, np.tile(self.ends, len(ending))]
        flat = np.concatenate(row_ids) * vocab + np.concatenate(token_ids)  # (allowed pairs,)
        flat = torch.from_numpy(flat).to(log_probs.device)
        out = log_probs.contiguous()
        values = out.view(-1).index_select(0, flat)  # (allowed pairs,)
        eos_values = out[:, self.eos]  # (rows, #eos)
        out.fill_(-torch.inf).view(-1).index_copy_(0, flat, values)
        finite = torch.zeros(rows, device=out.device).index_add_(0, flat // vocab, (values > -torch.inf).float())
        dead = (finite == 0)[:, None]  # (rows, 1): rows left -inf everywhere
        out[:, self.eos] = torch.where(dead, eos_values, out[:, self.eos])
        return out

    def _options(self, ids: list[int]) -> tuple[np.ndarray, bool]:
        """For one row's generated ids: the tokens that may continue its open entry, and whether the entry may
        end here (with the separator or EOS)."""
        separator = self.trie.separator_id
        entries: list[list[int]] = [[]]
        for token in ids:
            if token == separator:
                entries.append([])
            else:
                entries[-1].append(token)
        *finished, current = entries
        written = set()
        for position, entry in enumerate(finished):
            done = self.trie.node(entry, first=position == 0)
            if done is not None and done.tag is not None:
                written.add(done.tag)
        first = not finished
        node = self.trie.node(current, first)
        if node is None:
            return _NO_IDS, False
        depth, prefix = len(current), tuple(current)
        through: dict[int, int] = {}  # next token -> written tags below it
        for tag in written:
            path = self.trie.path(tag, first)
            if len(path) > depth and path[:depth] == prefix:
                through[path[depth]] = through.get(path[depth], 0) + 1
        closed = [token for token, count in through.items() if count >= node.below[token]]
        next_ids = np.setdiff1d(node.next_ids(), closed, assume_unique=True) if closed else node.next_ids()
        return next_ids, node.tag is not None and node.tag not in written


_NO_IDS = np.zeros(0, dtype=np.int64)


def vocabulary_constraint(
    tokenizer, tags: Iterable[str], eos_ids: Sequence[int], prompt_length: int
) -> VocabularyConstraint:
    """The ``VocabularyConstraint`` of a batch whose prompts are ``prompt_length`` (padded) tokens long."""
    return VocabularyConstraint(tag_trie(tokenizer, tags), eos_ids, prompt_length)
