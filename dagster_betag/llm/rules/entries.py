"""Following the numbered list a row writes, token by token: the rules of base-tag decoding.

``EntryTracker`` reads, per row, the list entries generated so far; ``RepetitionBan`` and
``LowercaseOnly`` are ``LogitsRule``s that use it, and ``EnoughTags`` is the stopping
criterion that ends a row once it has written enough valid entries (see
``base_tags.BaseTagConfig`` for what each ban does to the answers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from dagster_betag.llm.tags import clean_text, echo_forms, normalize_tag
from dagster_betag.llm.tokens import COMPLETE_MARKER, TokenTable, word_key

# words that may start many different tags, so they are never banned as a repeated first word
FIRST_WORD_STOPWORDS = frozenset("of in on at to for and or with without from by its his her their".split())



@dataclass
class _Row:
    entries: list[str] = field(default_factory=list)  # cleaned texts of the entries written
    valid: int = 0  # entries that are distinct, valid tags
    first_words: set[str] = field(default_factory=set)  # first-token keys of the entries written
    numeric_entries: int = 0  # entries that start with a digit
    # keys of the word-start tokens of every entry, the current one included
    words: set[str] = field(default_factory=set)
    marker: str = ""  # the list marker ("2. ") written before the current entry's content
    current: list[int] = field(default_factory=list)  # content tokens of the current entry
    finished: bool = False  # end of turn


class EntryTracker:
    """Per row, the list entries generated so far, consumed incrementally from input_ids.

    A separator token (newline, comma, semicolon, pipe) closes the current entry; marker
    tokens (digits, "." and bullets) before an entry's content are its list marker; an
    end-of-turn token finishes the row. An entry is valid when it normalizes to a tag that is
    neither an earlier entry, an echo of the row's title, nor one of the row's excluded tags.
    Shared by RepetitionBan and EnoughTags: whichever is called first consumes new tokens.
    """

    def __init__(
        self,
        table: TokenTable,
        *,
        batch_size: int,
        prompt_length: int,
        num_tags: int,
        echoes: Sequence[str] = (),
        excluded: Sequence[Iterable[str]] = (),
        eos_ids: Iterable[int] = (),
    ):
        self.table = table
        self.num_tags = num_tags
        self.rows = [_Row() for _ in range(batch_size)]
        titles = list(echoes)[:batch_size] + [""] * max(0, batch_size - len(echoes))
        self.echoes = [echo_forms([title]) for title in titles]
        extra = [frozenset(e) for e in list(excluded)[:batch_size]]
        self.excluded = extra + [frozenset()] * (batch_size - len(extra))
        self.eos_ids = {int(i) for i in eos_ids}
        self.consumed = prompt_length

    def update(self, input_ids: torch.Tensor) -> None:
        length = input_ids.shape[1]
        if length <= self.consumed:
            return
        new = input_ids[:, self.consumed : length].tolist()
        self.consumed = length
        for index, tokens in enumerate(new):
            for token in tokens:
                self._consume(index, int(token))

    def _consume(self, index: int, token: int) -> None:
        row = self.rows[index]
        if row.finished:
            return
        table = self.table
        if token in self.eos_ids or not 0 <= token < len(table.texts):
            self._close(index)
            row.finished = True
        elif table.is_separator[token]:
            self._close(index)
        elif not row.current and (
            not table.texts[token].strip() or (table.is_marker[token] and not self.at_entry_content(index))
        ):
            row.marker += table.texts[token]
        else:
            if table.starts_word[token] or not row.current:
                key = word_key(table.texts[token])
                if key and key not in FIRST_WORD_STOPWORDS:
                    row.words.add(key)
            row.current.append(token)

    def _close(self, index: int) -> None:
        row = self.rows[index]
        current = row.current
        row.current, row.marker = [], ""
        if not current:
            return
        text = clean_text("".join(self.table.texts[t] for t in current))
        first = word_key(self.table.texts[current[0]])
        tag = normalize_tag(text)
        if tag is not None and tag not in row.entries and tag not in self.echoes[index] and tag not in self.excluded[index]:
            row.valid += 1
        row.entries.append(text)
        if first and first not in FIRST_WORD_STOPWORDS:
            row.first_words.add(first)
        if first[:1].isdigit():
            row.numeric_entries += 1

    def select(self, keep: Sequence[int]) -> None:
        """Keep only these rows, in this order (rows that left the batch)."""
        self.rows = [self.rows[i] for i in keep]
        self.echoes = [self.echoes[i] for i in keep]
        self.excluded = [self.excluded[i] for i in keep]

    def at_entry_content(self, index: int) -> bool:
        """True once the row's list marker ("2.", "-") is complete and the content is next."""
        return bool(COMPLETE_MARKER.match(self.rows[index].marker))

    def current_text(self, index: int) -> str:
        """The cleaned text of the entry row ``index`` is writing."""
        return clean_text("".join(self.table.texts[t] for t in self.rows[index].current))

    def done(self, index: int) -> bool:
        row = self.rows[index]
        return row.finished or row.valid >= self.num_tags


class RepetitionBan:
    """A ``LogitsRule`` that bans, per row, the tokens that would repeat an entry or derail the list.

    At an entry's start: ``banned_first_words``; once the marker is complete, also the first
    token of every earlier entry (``ban_first_word``), blanks, and digits beyond
    ``max_numeric_entries``. Inside an entry: a word already written by the row
    (``ban_words``), and ending the entry while it equals an earlier one or the title
    (``ban_duplicates``).
    """

    def __init__(
        self,
        tracker: EntryTracker,
        *,
        ban_first_word: bool = True,
        ban_duplicates: bool = True,
        ban_words: bool = True,
        banned_first_words: Sequence[str] = (),
        max_numeric_entries: int | None = None,
    ):
        self.tracker = tracker
        self.ban_first = ban_first_word
        self.ban_duplicates = ban_duplicates
        self.ban_words = ban_words
        self.banned_first_words = frozenset(w.strip().lower() for w in banned_first_words)
        self.max_numeric_entries = max_numeric_entries
        self._end_ids = torch.tensor(sorted(tracker.eos_ids), dtype=torch.long)

    def __call__(self, sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """(rows, P + t) ids so far, (rows, V) log_probs -> (rows, V), banned tokens at -inf (in place)."""
        self.tracker.update(sequences)
        table = self.tracker.table
        rows: list[torch.Tensor] = []  # (row, token) pairs to ban, gathered for one index_put
        columns: list[torch.Tensor] = []

        def ban(index: int, ids: torch.Tensor | list[int]) -> None:
            ids = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, dtype=torch.long)
            if len(ids):
                rows.append(torch.full_like(ids, index))
                columns.append(ids)

        for index, row in enumerate(self.tracker.rows):
            if row.finished:
                continue
            if not row.current:
                content_next = self.tracker.at_entry_content(index)
                words = set(self.banned_first_words)
                earlier = (row.first_words if self.ban_first else set()) | (row.words if self.ban_words else set())
                if content_next:
                    words |= earlier
                elif row.marker == "":  # unnumbered entries: a digit would be the number
                    words |= {w for w in earlier if any(c.isalpha() for c in w)}
                ban(index, [i for word in words for i in table.ids_by_word.get(word, ())])
                if content_next:
                    ban(index, table.blank_ids)
                    limit = self.max_numeric_entries
                    if limit is not None and row.numeric_entries >= limit:
                        ban(index, table.digit_start_ids)
            else:
                if self.ban_words and row.words:
                    ban(index, [i for word in row.words for i in table.ids_by_word.get(word, ()) if table.starts_word[i]])
                if self.ban_duplicates:
                    text = self.tracker.current_text(index)
                    if text and (text in row.entries or text in self.tracker.echoes[index]):
                        ban(index, table.separator_ids)
                        ban(index, self._end_ids)
        if rows:
            where = (torch.cat(rows).to(log_probs.device), torch.cat(columns).to(log_probs.device))
            log_probs[where] = -float("inf")
        return log_probs


class LowercaseOnly:
    """A ``LogitsRule`` that bans every token with an uppercase letter: tags are lowercase phrases.

    Besides matching what the normalizer keeps, this steers a small model away from listing
    other titles ("The Lion King") and names, which it writes capitalized.
    """

    def __init__(self, table: TokenTable):
        self.upper_ids = table.upper_ids

    def __call__(self, sequences: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """(rows, P + t) ids so far, (rows, V) log_probs -> (rows, V), banned tokens at -inf (in place)."""
        if self.upper_ids.device != log_probs.device:
            self.upper_ids = self.upper_ids.to(log_probs.device)
        if len(self.upper_ids):
            log_probs[:, self.upper_ids] = -float("inf")
        return log_probs


class EnoughTags(StoppingCriteria):
    """Stops a row once it has written ``num_tags`` valid entries, or ended its turn."""

    def __init__(self, tracker: EntryTracker):
        self.tracker = tracker

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.tracker.update(input_ids)
        done = [self.tracker.done(i) for i in range(len(self.tracker.rows))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
