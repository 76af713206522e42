"""BETag generation: aggregation of beams, and generation end to end on a tiny model."""

import math
from dataclasses import replace

import torch

from dagster_betag.llm.betag import (
    BetagConfig,
    WeightedTag,
    aggregate_beams,
    first_group,
    generate_betags,
    inverse_item_frequency,
    unfinished_entry_dropped,
    variant_decoding,
)
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.rules.beams import BeamTagRules
from dagster_betag.llm.tokens import end_of_turn_ids, token_table
from dagster_betag.llm.variants import ABLATIONS, FULL_BETAG, variant_named
from dagster_betag.llm.tags import clean_text, split_entries
from dagster_betag.llm.vocabulary import VocabularyConfig, build_tag_map


def test_aggregation_ranks_by_beam_agreement_then_position():
    beams = [
        ["heist", "crime", "dark comedy"],  # beam 0: the base tags
        ["crime", "heist", "gangster"],
        ["crime", "crime", "nonlinear"],  # a repeated tag counts once per beam
    ]
    assert aggregate_beams(beams, top_k=4) == [
        WeightedTag("crime", 3, 1 / 2 + 1 + 1),
        WeightedTag("heist", 2, 1 + 1 / 2),
        WeightedTag("nonlinear", 1, 1 / 2),  # position 1 in its (deduplicated) beam
        WeightedTag("dark comedy", 1, 1 / 3),  # ties with "gangster": seen first
    ]
    assert [t.tag for t in aggregate_beams(beams, top_k=2)] == ["crime", "heist"]


def test_a_tag_weight_multiplies_the_beam_count_and_idf_is_ln_n_over_df():
    beams = [["crime", "heist"], ["crime", "gangster"], ["crime"]]
    idf = inverse_item_frequency({"crime": 4, "heist": 1}, n_items=4)  # gangster: only in these beams' item, df 1
    assert (idf("crime"), idf("heist"), idf("gangster")) == (0.0, math.log(4), math.log(4))
    assert [t.tag for t in aggregate_beams(beams, top_k=3)] == ["crime", "heist", "gangster"]
    # crime, on every item, weighs 0; heist and gangster tie on 1 x ln 4, heist came earlier in its beam
    assert aggregate_beams(beams, top_k=3, tag_weight=idf) == [
        WeightedTag("heist", 1, 1 / 2),
        WeightedTag("gangster", 1, 1 / 2),
        WeightedTag("crime", 3, 3.0),
    ]


def test_ties_keep_first_appearance_order():
    assert [t.tag for t in aggregate_beams([["b", "a"], ["a", "b"]], top_k=5)] == ["b", "a"]


def test_generation_keeps_order_base_beam_and_top_k(tiny_llm):
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"]), ("3", ["coming of age", "summer", "friendship"])]
    config = BetagConfig(decoding=DiverseBeamConfig(num_groups=3, beams_per_group=2, max_new_tokens=12), top_k=4, batch_rows=12)
    done: list[int] = []
    results = generate_betags(tiny_llm, items, config, on_batch=done.append)
    assert [r.item_id for r in results] == ["1", "2", "3"] and sum(done) == 3
    for (item_id, base), result in zip(items, results):
        assert len(result.beam_texts) == config.decoding.num_groups * config.decoding.beams_per_group
        assert result.beam_tags[0] == base  # the base tags are beam 0
        assert len(result.tags) <= config.top_k
        assert all(1 <= t.n_beams <= len(result.beam_tags) for t in result.tags)
    # batching does not change what an item gets
    alone = generate_betags(tiny_llm, items[2:], config)
    assert alone[0].beam_texts == results[2].beam_texts


def test_cold_items_need_only_base_tags(tiny_llm):
    config = BetagConfig(decoding=DiverseBeamConfig(num_groups=2, max_new_tokens=8), include_base_tags=False)
    (result,) = generate_betags(tiny_llm, [("new-item", ["documentary", "nature"])], config)
    assert len(result.beam_tags) == 2


def test_profiles_name_the_ablations_the_library_decodes():
    from dagster_betag.profiles import ALL_ABLATIONS

    assert ALL_ABLATIONS == [variant.name for variant in ABLATIONS]


def test_a_one_beam_variant_read_off_group_0_equals_its_own_decode(tiny_llm):
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"]), ("3", ["coming of age", "summer", "friendship"])]
    items += [(str(n), [f"tag {n}", "drama"]) for n in range(4, 12)]
    diverse = BetagConfig(decoding=DiverseBeamConfig(num_groups=4, max_new_tokens=16), top_k=6, batch_rows=16)
    one_beam = replace(diverse, decoding=variant_decoding(variant_named("one_beam"), diverse.decoding))
    decoded_apart = generate_betags(tiny_llm, items, one_beam)  # other batches, other padding: 16 items per batch
    from_group_0 = [first_group(result, one_beam) for result in generate_betags(tiny_llm, items, diverse)]
    assert from_group_0 == decoded_apart
    # the groups after 0 are pushed elsewhere, so group 0 is not just any group
    assert any(len(set(r.beam_texts)) > 1 for r in generate_betags(tiny_llm, items, diverse))


def test_single_beam_variants_decode_one_group_of_one_beam():
    decoding = DiverseBeamConfig(num_groups=6, beams_per_group=2, length_penalty=0.5, early_stopping=False)
    assert variant_decoding(FULL_BETAG, decoding) == decoding
    assert variant_decoding(variant_named("no_finetune"), decoding) == decoding
    for name in ("one_beam", "neither"):
        single = variant_decoding(variant_named(name), decoding)
        assert (single.num_groups, single.beams_per_group) == (1, 1)
        assert single == DiverseBeamConfig(num_groups=1, beams_per_group=1, length_penalty=0.5, early_stopping=False)
    assert BetagConfig(decoding=decoding, batch_rows=24).items_per_batch == 2


def test_a_beam_cut_by_the_token_limit_loses_only_its_unfinished_entry():
    assert unfinished_entry_dropped("love, family, family-fr", finished=False) == "love, family"
    assert unfinished_entry_dropped("love, family,", finished=False) == "love, family"
    assert unfinished_entry_dropped("love, family", finished=True) == "love, family"
    assert unfinished_entry_dropped("lov", finished=False) == ""


def beam_rules_scores(llm, written: str, config: BetagConfig):
    tokenizer = llm.tokenizer
    prompt = tokenizer("Next item tags:", add_special_tokens=False).input_ids
    answer = tokenizer(written, add_special_tokens=False).input_ids
    eos = end_of_turn_ids(llm)
    rules = BeamTagRules(
        token_table(tokenizer),
        eos,
        len(prompt),
        max_tags=config.max_tags_per_beam,
        ban_repeated=config.ban_repeated_tags,
    )
    log_probs = torch.zeros(1, len(token_table(tokenizer).texts))
    return rules(torch.tensor([prompt + answer]), log_probs)[0], tokenizer, eos


def test_beam_rules_ban_ending_a_repeated_tag(tiny_llm):
    scores, tokenizer, eos = beam_rules_scores(tiny_llm, "love, family, family", BetagConfig())
    comma = tokenizer(",", add_special_tokens=False).input_ids[0]
    word = tokenizer(" values", add_special_tokens=False).input_ids[0]
    assert scores[comma] == -torch.inf and bool((scores[eos] == -torch.inf).all())
    assert scores[word] == 0  # "family values" stays open
    fresh, _, _ = beam_rules_scores(tiny_llm, "love, family", BetagConfig())
    assert fresh[comma] == 0 and bool((fresh[eos] == 0).all())
    unbanned, _, _ = beam_rules_scores(tiny_llm, "love, family, family", BetagConfig(ban_repeated_tags=False))
    assert unbanned[comma] == 0


def test_beam_rules_end_a_beam_after_its_tag_cap(tiny_llm):
    capped, _, eos = beam_rules_scores(tiny_llm, "love, family, war,", BetagConfig(max_tags_per_beam=3))
    assert bool((capped[eos] == 0).all()) and int(torch.isfinite(capped).sum()) == len(eos)
    open_beam, _, _ = beam_rules_scores(tiny_llm, "love, family, war", BetagConfig(max_tags_per_beam=3))
    assert int(torch.isfinite(open_beam).sum()) == open_beam.numel()  # the third tag may still grow


def small_tag_map():
    vocabulary_tags = {
        "a": ["space opera", "rebellion", "heist", "dark comedy"],
        "b": ["coming of age", "summer", "friendship", "time travel"],
        "c": ["heists", "robot", "desert", "romance"],  # "heists" is a spelling of "heist"
    }
    return build_tag_map(vocabulary_tags, VocabularyConfig(merge_threshold=None, max_item_share=None))


def test_constrained_beams_write_only_canonical_tags_and_free_ones_need_not(tiny_llm):
    tag_map = small_tag_map()
    vocabulary = set(tag_map.vocabulary())
    assert "heists" not in vocabulary and "heist" in vocabulary
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"])]
    config = BetagConfig(decoding=DiverseBeamConfig(num_groups=4, max_new_tokens=24), top_k=30, include_base_tags=False)
    constrained = generate_betags(tiny_llm, items, config, tag_map=tag_map)
    free = generate_betags(tiny_llm, items, replace(config, constrain_to_vocabulary=False), tag_map=tag_map)

    def entries(results) -> set[str]:
        """Every whole entry the beams wrote, as text (before parsing drops junk)."""
        return {
            clean_text(entry)
            for result in results
            for text in result.beam_texts
            for entry in split_entries(unfinished_entry_dropped(text, finished=False))
        }

    parsed = {tag for result in constrained for beam in result.beam_tags for tag in beam}
    assert parsed and parsed <= vocabulary and entries(constrained) <= vocabulary
    assert entries(free) - vocabulary  # the random model, left free, writes other text


def test_contrastive_betags_carry_the_no_item_prompt_under_the_beam_rules(tiny_llm):
    """alpha > 0: one extra prompt row (the item written as no tags) in every prefill, twice the rows per
    step, other beams than alpha = 0, and the vocabulary constraint and the tag cap still hold."""
    tag_map = small_tag_map()
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"]), ("3", ["summer"])]
    decoding = DiverseBeamConfig(num_groups=2, max_new_tokens=24)
    config = BetagConfig(decoding=decoding, include_base_tags=False, max_tags_per_beam=3, batch_rows=4)
    plain = generate_betags(tiny_llm, items, config, tag_map=tag_map)
    contrastive_config = replace(config, decoding=replace(decoding, contrastive_alpha=1.0, plausibility_beta=0.01))
    rows = []
    handle = tiny_llm.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        contrastive = generate_betags(tiny_llm, items, contrastive_config, tag_map=tag_map)
    finally:
        handle.remove()
    prefills = [shape[0] for shape in rows if shape[1] > 1]
    assert prefills[1:] == [2 + 1, 1 + 1]  # after the shared prefix: 2 items per batch, each batch + the no-item row
    assert {shape[0] for shape in rows if shape[1] == 1} <= {2 * g for g in range(1, 2 * 2 + 1)}
    assert [r.beam_texts for r in contrastive] != [r.beam_texts for r in plain]
    vocabulary = set(tag_map.vocabulary())
    for result in contrastive:
        assert all(set(beam) <= vocabulary and len(beam) <= 3 for beam in result.beam_tags)
