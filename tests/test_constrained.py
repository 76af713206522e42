"""Vocabulary-constrained decoding: the tag trie against the real tokenizer, the processor on hand-made rows,
and diverse beam search on the tiny random model, whose unconstrained beams are gibberish."""

import torch

from dagster_betag.llm.behavior import prompt_text
from dagster_betag.llm.betag import BetagConfig, unfinished_entry_dropped
from dagster_betag.llm.decoding import DiverseBeamConfig, diverse_beam_search
from dagster_betag.llm.rules import chain_rules
from dagster_betag.llm.rules.beams import BeamTagRules
from dagster_betag.llm.rules.vocabulary import TagTrie, VocabularyConstraint, tag_trie
from dagster_betag.llm.tokens import end_of_turn_ids, token_table
from dagster_betag.llm.tags import format_tags, parse_tags, split_entries

VOCABULARY = [
    "dark comedy", "dark fantasy", "dark", "heist", "crime", "1970s", "coming of age", "space opera", "time travel",
    "friendship", "family", "war", "love", "summer", "revenge", "robots", "music", "sci-fi", "world war ii",
]  # fmt: skip
PROMPT = "Next item tags:"


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_formatted_tags_walk_the_trie(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    trie = TagTrie(tokenizer, [*VOCABULARY, "dark", "good, bad"])
    assert trie.tags == tuple(VOCABULARY)  # the duplicate is ignored
    assert trie.dropped == ("good, bad",)  # it would read back as two tags
    for tags in (VOCABULARY, VOCABULARY[::-1], ["1970s", "dark", "dark comedy"]):
        ids = ids_of(tokenizer, format_tags(tags))
        entries: list[list[int]] = [[]]
        for token in ids:
            if token == trie.separator_id:
                entries.append([])
            else:
                entries[-1].append(token)
        assert len(entries) == len(tags)
        for position, (tag, entry) in enumerate(zip(tags, entries, strict=True)):
            first = position == 0
            assert tuple(entry) == trie.path(tag, first)
            for depth in range(len(entry)):
                assert trie.node(entry[:depth], first).below[entry[depth]] >= 1
            assert trie.node(entry, first).tag == tag
    # the first tag has no leading space, a later one does: two different paths
    assert trie.path("dark", first=True) != trie.path("dark", first=False)
    assert trie.node(ids_of(tokenizer, "dark"), first=True).below.keys() == {
        ids_of(tokenizer, " comedy")[0],
        ids_of(tokenizer, " fantasy")[0],
    }
    assert trie.node(ids_of(tokenizer, "xyzzy"), first=True) is None


def test_tries_are_reused_for_the_same_vocabulary(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    trie = tag_trie(tokenizer, VOCABULARY)
    assert tag_trie(tokenizer, reversed(VOCABULARY)) is trie
    assert tag_trie(tokenizer, VOCABULARY[1:]) is not trie


def constrained(tokenizer, answers: list[list[int]], log_probs: torch.Tensor | None = None):
    """The constraint's scores for rows of generated ids after a shared prompt (random log-probs by default), and
    the log-probs it was given (it works in place)."""
    prompt = ids_of(tokenizer, PROMPT)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if log_probs is None:
        log_probs = torch.randn(len(answers), len(tokenizer), generator=torch.Generator().manual_seed(0))
    constraint = VocabularyConstraint(tag_trie(tokenizer, VOCABULARY), eos, len(prompt))
    return constraint(torch.tensor([prompt + answer for answer in answers]), log_probs.clone()), log_probs, eos


def allowed(scores: torch.Tensor) -> set[int]:
    return set(torch.isfinite(scores).nonzero().flatten().tolist())


def test_a_whole_tag_allows_its_children_the_separator_and_eos(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    trie = tag_trie(tokenizer, VOCABULARY)
    scores, log_probs, eos = constrained(tokenizer, [ids_of(tokenizer, "dark")])
    children = set(trie.node(ids_of(tokenizer, "dark"), first=True).below)
    assert allowed(scores[0]) == children | {trie.separator_id, *eos}
    kept = sorted(allowed(scores[0]))
    assert torch.equal(scores[0, kept], log_probs[0, kept])  # allowed tokens keep their log-probs
    # an open entry that is no whole tag may not end; an empty answer may start any tag, without a space
    scores, _, _ = constrained(tokenizer, [ids_of(tokenizer, "coming of")])
    assert allowed(scores[0]) == {ids_of(tokenizer, " age")[0]}
    scores, _, _ = constrained(tokenizer, [[]])
    assert allowed(scores[0]) == {trie.path(tag, first=True)[0] for tag in VOCABULARY}


def test_written_tags_cannot_be_written_again(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    trie = tag_trie(tokenizer, VOCABULARY)
    end = {trie.separator_id, *constrained(tokenizer, [[]])[2]}
    comedy, fantasy = ids_of(tokenizer, " comedy")[0], ids_of(tokenizer, " fantasy")[0]
    # "dark" again: may grow into a new tag, not end
    scores, _, _ = constrained(tokenizer, [ids_of(tokenizer, "dark, dark")])
    assert allowed(scores[0]) == {comedy, fantasy}
    # "dark comedy" written: " comedy" leads only to it, so it is closed; "dark" itself may end
    scores, _, _ = constrained(tokenizer, [ids_of(tokenizer, "dark comedy, dark")])
    assert allowed(scores[0]) == {fantasy} | end
    # after a separator, a first token whose every tag is written is closed, a shared one stays open
    scores, _, _ = constrained(tokenizer, [ids_of(tokenizer, "war, heist, crime,")])
    starts = {trie.path(tag, first=False)[0] for tag in VOCABULARY}
    closed = {trie.path(tag, first=False)[0] for tag in ("war", "heist", "crime")}  # " war", " he", " crime"
    assert allowed(scores[0]) == starts - closed
    assert ids_of(tokenizer, " dark")[0] in allowed(scores[0])


def test_rows_with_nothing_left_end(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    # off the trie, the whole vocabulary written, and a row where an earlier processor left only EOS
    everything = ids_of(tokenizer, format_tags(VOCABULARY) + ",")
    scores, log_probs, eos = constrained(tokenizer, [ids_of(tokenizer, "xyzzy")])
    assert allowed(scores[0]) == set(eos) and torch.equal(scores[0, eos], log_probs[0, eos])
    scores, _, _ = constrained(tokenizer, [everything])
    assert allowed(scores[0]) == set(eos)
    only_eos = torch.full((1, len(tokenizer)), -torch.inf)
    only_eos[0, eos] = -0.5
    scores, _, _ = constrained(tokenizer, [ids_of(tokenizer, "war, heist,")], only_eos)
    assert allowed(scores[0]) == set(eos) and bool((scores[0, eos] == -0.5).all())


def test_rows_of_a_batch_are_constrained_each_by_its_own_tokens(embedded_llm):
    tokenizer = embedded_llm.tokenizer
    rows = ["dark, dark", "crime, he", "war, dark", "xyzzy,"]
    answers = [ids_of(tokenizer, row) for row in rows]
    assert {len(answer) for answer in answers} == {3}
    batch, log_probs, _ = constrained(tokenizer, answers)
    for row, answer in enumerate(answers):
        alone, _, _ = constrained(tokenizer, [answer], log_probs[row : row + 1])
        assert torch.equal(batch[row], alone[0]), rows[row]
    assert allowed(batch[1]) == {ids_of(tokenizer, "ist")[0]}


def test_chained_processors_run_in_order():
    log_probs = torch.zeros(1, 3)
    double = chain_rules(lambda s, lp: lp + 1, None, lambda s, lp: lp * 2)
    assert double(torch.zeros(1, 1), log_probs).tolist() == [[2.0, 2.0, 2.0]]


def decode(llm, processor_for, max_new_tokens: int = 24):
    """Diverse beam search (4 groups of 1 beam) over two prompts; (text, finished) per beam, and the scores."""
    tokenizer = llm.tokenizer
    prompts = [prompt_text(tokenizer, [["space opera", "rebellion"]]), prompt_text(tokenizer, [["heist", "crime"]])]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    eos = end_of_turn_ids(llm)
    output = diverse_beam_search(
        llm.model,
        batch.input_ids,
        batch.attention_mask,
        DiverseBeamConfig(num_groups=4, beams_per_group=1, max_new_tokens=max_new_tokens),
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=processor_for(tokenizer, eos, batch.input_ids.shape[1]),
    )
    finished = torch.isin(output.sequences, torch.tensor(eos)).any(dim=-1)  # (N, G*B)
    texts = tokenizer.batch_decode(output.sequences.flatten(0, 1), skip_special_tokens=True)
    return list(zip(texts, finished.flatten().tolist(), strict=True)), output.scores


def rules(config: BetagConfig):
    return lambda tokenizer, eos, prompt_length: BeamTagRules(
        token_table(tokenizer),
        eos,
        prompt_length,
        max_tags=config.max_tags_per_beam,
        ban_repeated=config.ban_repeated_tags,
    )


def with_constraint(make_rules, before=None):
    def processor_for(tokenizer, eos, prompt_length):
        constraint = VocabularyConstraint(tag_trie(tokenizer, VOCABULARY), eos, prompt_length)
        return chain_rules(before, make_rules(tokenizer, eos, prompt_length), constraint)

    return processor_for


def whole_entries(text: str, finished: bool) -> list[str]:
    return [entry.strip() for entry in split_entries(unfinished_entry_dropped(text, finished))]


def test_constrained_beams_write_only_vocabulary_tags(tiny_llm):
    vocabulary = set(VOCABULARY)
    beams, scores = decode(tiny_llm, with_constraint(rules(BetagConfig())))
    assert bool(torch.isfinite(scores).all())
    for text, finished in beams:
        entries = whole_entries(text, finished)
        assert entries and set(entries) <= vocabulary, text
        assert entries == parse_tags(unfinished_entry_dropped(text, finished)), text  # each tag once, as written
    # the same search without the constraint: the random model writes something else
    free, _ = decode(tiny_llm, rules(BetagConfig()))
    assert any(not {entry.strip() for entry in split_entries(text)} <= vocabulary for text, _ in free)


def test_constraint_keeps_the_tag_cap_of_beam_rules(tiny_llm):
    """The rules' tag cap keeps only EOS after the separator: the constraint must keep it, not leave the beam at
    -inf everywhere. EOS is pushed down first, so that the beams write tags until the cap."""
    eos = torch.tensor(end_of_turn_ids(tiny_llm))

    def late_eos(sequences, log_probs):
        return log_probs.index_add(1, eos, torch.full((len(log_probs), len(eos)), -30.0))

    beams, scores = decode(tiny_llm, with_constraint(rules(BetagConfig(max_tags_per_beam=3)), before=late_eos))
    assert bool(torch.isfinite(scores).all())
    for text, finished in beams:
        tags = parse_tags(text)
        assert finished and len(tags) == 3 and set(tags) <= set(VOCABULARY), text
