"""One batch of base-tag answers: greedy ``model.generate`` under the entry rules.

Rows that have written enough tags leave the batch every ``drop_finished_every`` steps:
``generate()`` resumes from its key/value cache with the others, so a batch costs about the
sum of its rows' lengths rather than its longest row times its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from dagster_betag.llm.kv_cache import make_growing
from dagster_betag.llm.prefix import prefixed_batch, repeated_cache
from dagster_betag.llm.rules.entries import EnoughTags, EntryTracker, LowercaseOnly, RepetitionBan
from dagster_betag.llm.tokens import TokenTable, end_of_turn_ids

if TYPE_CHECKING:  # base_tags imports this module; the config is only an annotation here
    from dagster_betag.llm.base_tags import BaseTagConfig


def repetition_ban(tracker: EntryTracker, config: BaseTagConfig) -> RepetitionBan:
    """The ban on repeated, echoed and malformed entries, with the switches ``config`` sets:
    one place maps the knobs onto the rule, so tests check the rule generation really runs."""
    return RepetitionBan(
        tracker,
        ban_first_word=config.ban_repeated_first_word,
        ban_duplicates=config.ban_duplicate_entries,
        ban_words=config.ban_repeated_words,
        banned_first_words=config.banned_first_words,
        max_numeric_entries=config.max_numeric_entries,
    )


def generate_batch(
    llm,
    table: TokenTable,
    prefix_ids: list[int],
    shared_cache,
    suffixes: list[list[int]],
    *,
    titles: list[str],
    excluded: list[frozenset[str]],
    config: BaseTagConfig,
) -> list[str]:
    """The raw answers of one batch of item prompts (the shared prefix, then each item's rest),
    decoded greedily under the entry rules; rows leave the batch as they finish."""
    tokenizer, model = llm.tokenizer, llm.model
    pad = tokenizer.pad_token_id
    input_ids, attention_mask = prefixed_batch(prefix_ids, suffixes, pad, model.device)  # (N, P) each

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
    processors.append(repetition_ban(tracker, config))
    cache = None if shared_cache is None else repeated_cache(shared_cache, len(suffixes), config.max_new_tokens)

    prompt_length = input_ids.shape[1]
    answers: list[list[int]] = [[] for _ in suffixes]
    alive = list(range(len(suffixes)))  # batch rows still generating, by their original index
    sequences, mask = input_ids, attention_mask  # (n alive rows, P + t) each
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
        # without a prefix, the cache generate() made itself
        cache = make_growing(output.past_key_values, config.max_new_tokens - generated)
        chunk = later_chunks
    return tokenizer.batch_decode(answers, skip_special_tokens=True)
