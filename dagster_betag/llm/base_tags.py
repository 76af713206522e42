"""Base tags: batched greedy generation of each item's tags from its description.

Library code (no Dagster): plain lists in, plain lists out, input order kept::

    llm = load_llm(LLMConfig())
    tags = generate_base_tags(llm, items, BaseTagConfig(), on_batch=progress.update)  # update(n) per batch

How the 135M model is kept on track (measured on MovieLens; see the knobs of BaseTagConfig):

- the prompt (``prompts.base_tag_messages``) shows hand-written few-shot answers as a
  numbered list, one short lowercase tag per line;
- ``EntryTracker`` follows, token by token, the list entries each row has written, and
  ``RepetitionBan`` (a LogitsProcessor) uses it: an entry cannot start with an article or
  with the first word of an earlier entry, cannot reuse a word of an earlier entry, cannot
  end as a copy of an earlier entry or of the title, cannot be blank, and at most one entry
  may start with a digit (which ends "1940 / 1940 / 1940" and "300, 401, 501" runs);
  ``LowercaseOnly`` bans capitalized tokens, which keeps the model from listing other titles;
- ``EnoughTags`` (a StoppingCriteria) stops a row once it has written ``num_tags`` valid,
  distinct entries; every few steps the stopped rows leave the batch (generate() resumes from
  its cache with the others), so no row waits padded for the batch's longest answer;
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

import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from dagster_betag.llm.model import LoadedLLM
from dagster_betag.llm.prefix import prefix_cache, prefixed_batch, repeated_cache, split_shared_prefix
from dagster_betag.llm.prompts import DEFAULT_FEW_SHOT, ItemDescription, apply_chat, base_tag_messages
from dagster_betag.llm.tags import clean_text, echo_forms, normalize_tag, parse_tags

FewShot = Sequence[tuple[ItemDescription, list[str]]]


FEW_SHOT_SOURCES = ("default", "catalog")


@dataclass(frozen=True)
class BaseTagConfig:
    """Knobs of base-tag generation.

    - ``num_tags``: tags asked for in the prompt; a row stops after this many valid entries,
      and at most this many tags are kept per item.
    - ``max_new_tokens``: hard cap on generated tokens per item. A numbered one-word tag costs
      4 tokens ("2", ".", " word", newline); 8 tags take 31-48 tokens on MovieLens, and a row
      that keeps writing invalid entries (say, genres it does not have) stops here.
    - ``batch_size``: items per ``generate`` call. Larger batches amortize reading the weights
      at every step; memory grows with batch_size x (prompt + max_new_tokens). Tags do not
      depend on it (float32).
    - ``ban_repeated_first_word``: an entry cannot start with the first word (first token) of
      an earlier entry of that row ("dark comedy, dark fantasy, dark horror..."); function
      words such as "of" are exempt.
    - ``ban_duplicate_entries``: an entry cannot end (separator and end-of-turn banned) while
      it equals an earlier entry or the title.
    - ``ban_repeated_words``: inside an entry, a word (a word-start token) already written by
      the row cannot come again ("first love, second love, third love"; "the matrix 2, the
      matrix 3"); function words ("of", "and"...) are exempt. Each content word then appears in
      one tag at most, which also stops "laugh, laughter, laughs" runs.
    - ``banned_first_words``: words no entry may start with (any case). Articles lead a small
      model into listing titles ("the lion king") and add nothing to a tag.
    - ``max_numeric_entries``: how many entries may start with a digit ("1940s"); beyond it, a
      numbered entry cannot. None for no limit. Blank entries are never allowed.
    - ``lowercase_only``: ban tokens with uppercase letters (see ``LowercaseOnly``).
    - ``exclusive_attributes``: attributes whose catalog values are "either the item's or
      wrong" (genres): with ``catalog_values`` given to ``generate_base_tags``, a tag equal to
      such a value the item does not have is dropped and does not count toward ``num_tags``.
    - ``share_prompt_prefix``: compute the key/value cache of the prompt text shared by all
      items once per call and reuse it in every batch (same tags, far less prefill).
    - ``drop_finished_every``: rows that have stopped leave the batch every this many steps
      (generate() resumes from its cache with the others), so a batch costs about the sum of
      its rows' lengths rather than its longest row times its size; None runs each batch in
      one generate() call, where stopped rows are padded until the last one stops.
    - ``item_noun``: what the catalog's items are called in the prompt ("movie", "product").
    - ``few_shot``: the examples the prompt shows: ``"default"``, the hand-written movie
      examples (``prompts.DEFAULT_FEW_SHOT``); ``"catalog"``, this catalog's own items with the
      most human (native) tags, shown with those tags (``prompts.catalog_few_shot``), so a
      product catalog is shown products and its own tag style.
    """

    num_tags: int = 8
    max_new_tokens: int = 64
    batch_size: int = 64
    ban_repeated_first_word: bool = True
    ban_duplicate_entries: bool = True
    ban_repeated_words: bool = True
    banned_first_words: tuple[str, ...] = ("the", "a", "an")
    max_numeric_entries: int | None = 1
    lowercase_only: bool = True
    exclusive_attributes: tuple[str, ...] = ("genre",)
    share_prompt_prefix: bool = True
    drop_finished_every: int | None = 6
    item_noun: str = "movie"
    few_shot: str = "default"

    def __post_init__(self) -> None:
        if self.num_tags < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("num_tags, max_new_tokens and batch_size must be positive")
        if self.few_shot not in FEW_SHOT_SOURCES:
            raise ValueError(f"few_shot must be one of {', '.join(FEW_SHOT_SOURCES)}, not {self.few_shot!r}")


def catalog_attribute_values(items: Iterable[ItemDescription], names: Iterable[str] = ("genre",)) -> dict[str, set[str]]:
    """Every value of the named attributes over a catalog, cleaned: the ``catalog_values``
    argument of ``generate_base_tags``. Build it from the whole catalog, not from one shard,
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
    few_shot: FewShot = DEFAULT_FEW_SHOT,
    on_batch: Callable[[int], None] | None = None,
    catalog_values: Mapping[str, Iterable[str]] | None = None,
) -> list[list[str]]:
    """Each item's base tags (at most ``config.num_tags``, in generation order), in the order of ``items``.

    ``on_batch(n)`` is called after each batch with the number of items that batch finished
    (an increment, as ``tqdm.update`` and the pipeline's ``Progress.advance`` take).
    ``catalog_values`` (see ``catalog_attribute_values``) enables dropping tags that name
    another value of an exclusive attribute (a genre the item does not have).
    """
    texts = generate_base_tag_texts(
        llm, items, config, few_shot=few_shot, on_batch=on_batch, catalog_values=catalog_values
    )
    return [tags_from_answer(item, text, config, catalog_values) for item, text in zip(items, texts, strict=True)]


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
    config: BaseTagConfig = BaseTagConfig(),
    *,
    few_shot: FewShot = DEFAULT_FEW_SHOT,
    on_batch: Callable[[int], None] | None = None,
    catalog_values: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """The raw answers behind ``generate_base_tags`` (for logs and debugging), in input order."""
    if not items:
        return []
    tokenizer = llm.tokenizer
    prompts = [
        apply_chat(tokenizer, base_tag_messages(item, few_shot, num_tags=config.num_tags, item_noun=config.item_noun))
        for item in items
    ]
    prefix_ids, suffixes = split_shared_prefix(tokenizer, prompts, enabled=config.share_prompt_prefix)
    shared_cache = prefix_cache(llm.model, prefix_ids)
    excluded = [_contradicting_values(item, catalog_values, config.exclusive_attributes) for item in items]

    order = sorted(range(len(items)), key=lambda i: (len(suffixes[i]), i))
    texts: list[str] = [""] * len(items)
    table = token_table(tokenizer)
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        answers = _generate_batch(
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


# --- one batch -------------------------------------------------------------------------------


def _generate_batch(
    llm: LoadedLLM,
    table: TokenTable,
    prefix_ids: list[int],
    shared_cache,
    suffixes: list[list[int]],
    *,
    titles: list[str],
    excluded: list[frozenset[str]],
    config: BaseTagConfig,
) -> list[str]:
    tokenizer, model = llm.tokenizer, llm.model
    pad = tokenizer.pad_token_id
    input_ids, attention_mask = prefixed_batch(prefix_ids, suffixes, pad, model.device)

    eos = end_of_turn_ids(llm)
    tracker = EntryTracker(
        table,
        batch_size=len(suffixes),
        prompt_length=input_ids.shape[1],
        num_tags=config.num_tags,
        echoes=titles,
        excluded=excluded,
        eos_ids=eos,
    )
    processors = [LowercaseOnly(table)] if config.lowercase_only else []
    processors.append(
        RepetitionBan(
            tracker,
            ban_first_word=config.ban_repeated_first_word,
            ban_duplicates=config.ban_duplicate_entries,
            ban_words=config.ban_repeated_words,
            banned_first_words=config.banned_first_words,
            max_numeric_entries=config.max_numeric_entries,
        )
    )
    cache = None if shared_cache is None else repeated_cache(shared_cache, len(suffixes))

    prompt_length = input_ids.shape[1]
    answers: list[list[int]] = [[] for _ in suffixes]
    alive = list(range(len(suffixes)))  # batch rows still generating, by their original index
    sequences, mask = input_ids, attention_mask
    generated = 0
    if config.drop_finished_every:
        # an entry takes at least 3 tokens ("2", ".", " word") plus a separator: no row stops
        # before about 3 * num_tags steps; from then on, stopped rows leave every few steps
        chunk, later_chunks = max(config.drop_finished_every, 3 * config.num_tags), config.drop_finished_every
    else:
        chunk = later_chunks = config.max_new_tokens
    while alive:
        chunk = min(chunk, config.max_new_tokens - generated)
        with torch.inference_mode():
            output = model.generate(
                input_ids=sequences,
                attention_mask=mask,
                past_key_values=cache,
                do_sample=False,
                num_beams=1,
                max_new_tokens=chunk,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList([EnoughTags(tracker)]),
                return_dict_in_generate=True,
                # greedy: no sampling knobs of the model's generation_config may leak in
                temperature=None,
                top_p=None,
                top_k=None,
            )
        new_tokens = output.sequences.shape[1] - sequences.shape[1]
        generated += new_tokens
        tracker.update(output.sequences)
        out_of_tokens = generated >= config.max_new_tokens or new_tokens == 0
        keep = [i for i in range(len(alive)) if not out_of_tokens and not tracker.done(i)]
        kept = set(keep)
        for position, index in enumerate(alive):
            if position not in kept:
                answers[index] = output.sequences[position, prompt_length:].tolist()
        if not keep:
            break
        if len(keep) < len(alive):
            rows = torch.tensor(keep, device=model.device)
            output.past_key_values.batch_select_indices(rows)
            tracker.select(keep)
            sequences = output.sequences[rows]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], new_tokens)], dim=1)[rows]
            alive = [alive[i] for i in keep]
        else:
            sequences = output.sequences
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], new_tokens)], dim=1)
        cache = output.past_key_values
        chunk = later_chunks
    return tokenizer.batch_decode(answers, skip_special_tokens=True)


def end_of_turn_ids(llm: LoadedLLM) -> list[int]:
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


# --- what each token is ----------------------------------------------------------------------

# words that may start many different tags, so they are never banned as a repeated first word
FIRST_WORD_STOPWORDS = frozenset("of in on at to for and or with without from by its his her their".split())
# a complete list marker: after it, the entry's content starts, even with a digit ("2. 1940s")
_COMPLETE_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|[-*•·])\s*$")
# tokens that can be part of a list marker
_MARKER_TEXT = re.compile(r"^[\s\d.)(:#*•·\-–—+>]*$")
_SEPARATOR_CHARS = ("\n", ",", ";", "|")


@dataclass
class TokenTable:
    """What each vocabulary token is, for following list entries without decoding."""

    texts: list[str]  # each token decoded alone
    is_separator: list[bool]  # contains a list separator (newline, comma, semicolon, pipe)
    is_marker: list[bool]  # digits, list punctuation and spaces only
    starts_word: list[bool]  # begins with a space
    separator_ids: torch.Tensor
    upper_ids: torch.Tensor  # tokens with an uppercase letter
    digit_start_ids: torch.Tensor  # tokens whose text starts (after spaces) with a digit
    blank_ids: torch.Tensor  # whitespace-only tokens and separators: what cannot follow "2."
    ids_by_word: dict[str, list[int]] = field(repr=False)  # word key -> tokens with that key


def _word_key(text: str) -> str:
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
        key = _word_key(text)
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


# --- following the list a row writes ---------------------------------------------------------


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
                key = _word_key(table.texts[token])
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
        first = _word_key(self.table.texts[current[0]])
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
        return bool(_COMPLETE_MARKER.match(self.rows[index].marker))

    def current_text(self, index: int) -> str:
        """The cleaned text of the entry row ``index`` is writing."""
        return clean_text("".join(self.table.texts[t] for t in self.rows[index].current))

    def done(self, index: int) -> bool:
        row = self.rows[index]
        return row.finished or row.valid >= self.num_tags


class RepetitionBan(LogitsProcessor):
    """Bans, per row, the tokens that would repeat an entry or derail the list.

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

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.tracker.update(input_ids)
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
            where = (torch.cat(rows).to(scores.device), torch.cat(columns).to(scores.device))
            scores[where] = -float("inf")
        return scores


class LowercaseOnly(LogitsProcessor):
    """Bans every token with an uppercase letter: tags are lowercase phrases.

    Besides matching what the normalizer keeps, this steers a small model away from listing
    other titles ("The Lion King") and names, which it writes capitalized.
    """

    def __init__(self, table: TokenTable):
        self.upper_ids = table.upper_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.upper_ids.device != scores.device:
            self.upper_ids = self.upper_ids.to(scores.device)
        if len(self.upper_ids):
            scores[:, self.upper_ids] = -float("inf")
        return scores


class EnoughTags(StoppingCriteria):
    """Stops a row once it has written ``num_tags`` valid entries, or ended its turn."""

    def __init__(self, tracker: EntryTracker):
        self.tracker = tracker

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.tracker.update(input_ids)
        done = [self.tracker.done(i) for i in range(len(self.tracker.rows))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
