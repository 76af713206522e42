"""How a tag document becomes retrieval terms, and term lists become sparse count matrices.

A document is an item's tags in rank order, each a plain string ("dark comedy") or a
``(tag, weight)`` pair. Three tokenizations:

- ``"tag"``: each whole normalized tag is one term ("dark comedy").
- ``"words"``: each word of each tag is a term ("dark", "comedy").
- ``"both"`` (default): the whole tag as a ``#``-prefixed term ("#dark comedy") plus its words.

"both" is the default because the two halves fail in opposite ways: whole tags keep the
multi-word meaning ("dark comedy" is not "dark" + "comedy", "time travel" is not "time"), but
two sources rarely phrase a concept identically, so on their own they only match exact
spellings; words let "comedy" in a query match "dark comedy" in a document. With both, an
exact tag match scores on the tag term and on every word, a partial match on the shared
words only. The ``#`` prefix keeps a one-word tag's tag term ("#funny") apart from the word
"funny", so it counts once as a tag and once as a word, like a multi-word tag's terms do.

Weights: a tag's weight multiplies the frequency of every term it yields (weighted TF), so
a tag of weight 0.5 counts as half an occurrence. Plain-string tags weigh 1, which makes
the weighted frequencies the ordinary counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import sparse

TOKENIZATIONS = ("tag", "words", "both")
DEFAULT_TOKENIZATION = "both"
TAG_PREFIX = "#"

# a tag or a term occurrence: a bare string weighs 1, a pair its weight
Tag = str | tuple[str, float]
Term = str | tuple[str, float]

# a word is a run of letters or digits; inner hyphens and apostrophes stay ("sci-fi", "director's")
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_SPACES = re.compile(r"\s+")


def normalize_tag(tag: str) -> str:
    """NFKC, lowercase, single-spaced, trimmed: tag sources already normalize their tags; this
    only makes spellings that differ in case or spacing one term."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", tag).lower()).strip()


def tokenize(document: Iterable[Tag], mode: str = DEFAULT_TOKENIZATION) -> list[tuple[str, float]]:
    """The weighted term occurrences of one document, in tag order (a term may repeat)."""
    if mode not in TOKENIZATIONS:
        raise ValueError(f"unknown tokenization {mode!r}; use one of {', '.join(TOKENIZATIONS)}")
    terms: list[tuple[str, float]] = []
    for entry in document:
        tag, weight = _term(entry)
        tag = normalize_tag(tag)
        if not tag:
            continue
        if mode != "words":
            terms.append((TAG_PREFIX + tag if mode == "both" else tag, weight))
        if mode != "tag":
            terms.extend((word, weight) for word in _WORD.findall(tag))
    return terms


class TermIndex:
    """A fixed vocabulary (term -> column) and the sparse frequency matrices over it."""

    def __init__(self, terms: Iterable[str]) -> None:
        self.vocabulary: dict[str, int] = {}
        for term in terms:
            self.vocabulary.setdefault(term, len(self.vocabulary))
        self.terms = tuple(self.vocabulary)

    @classmethod
    def from_term_lists(cls, term_lists: Iterable[Iterable[Term]]) -> TermIndex:
        """Every term of ``term_lists``, in order of first appearance."""
        return cls(_term(entry)[0] for terms in term_lists for entry in terms)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def matrix(self, term_lists: Sequence[Iterable[Term]]) -> sparse.csr_matrix:
        """(n_lists, n_terms) weighted term frequencies: F[i, t] = sum of the weights of term t's
        occurrences in list i. Terms outside the vocabulary are dropped (they can match nothing)."""
        rows: list[int] = []
        columns: list[int] = []
        weights: list[float] = []
        for row, terms in enumerate(term_lists):
            for entry in terms:
                term, weight = _term(entry)
                column = self.vocabulary.get(term)
                if column is not None:
                    rows.append(row)
                    columns.append(column)
                    weights.append(weight)
        data = np.asarray(weights, dtype=np.float64)
        if data.size and not (np.isfinite(data).all() and (data >= 0).all()):
            raise ValueError("term weights must be finite and non-negative")
        # duplicates are summed by the COO -> CSR conversion; zero weights leave no entry, so
        # a term counts as present in a document exactly when its weight there is positive
        frequencies = sparse.coo_matrix((data, (rows, columns)), shape=(len(term_lists), len(self))).tocsr()
        frequencies.eliminate_zeros()
        return frequencies


def _term(entry: Tag | Term) -> tuple[str, float]:
    return (entry, 1.0) if isinstance(entry, str) else (entry[0], float(entry[1]))
