"""BETag generation: aggregation of beams, and generation end to end on a tiny model."""

from dagster_betag.llm.betag import BetagConfig, WeightedTag, aggregate_beams, generate_betags


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


def test_ties_keep_first_appearance_order():
    assert [t.tag for t in aggregate_beams([["b", "a"], ["a", "b"]], top_k=5)] == ["b", "a"]


def test_generation_keeps_order_base_beam_and_top_k(tiny_llm):
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"]), ("3", ["coming of age", "summer", "friendship"])]
    config = BetagConfig(num_groups=3, beams_per_group=2, max_new_tokens=12, top_k=4, batch_rows=12)
    done: list[int] = []
    results = generate_betags(tiny_llm, items, config, on_batch=done.append)
    assert [r.item_id for r in results] == ["1", "2", "3"] and sum(done) == 3
    for (item_id, base), result in zip(items, results):
        assert len(result.beam_texts) == config.num_groups * config.beams_per_group
        assert result.beam_tags[0] == base  # the base tags are beam 0
        assert len(result.tags) <= config.top_k
        assert all(1 <= t.n_beams <= len(result.beam_tags) for t in result.tags)
    # batching does not change what an item gets
    alone = generate_betags(tiny_llm, items[2:], config)
    assert alone[0].beam_texts == results[2].beam_texts


def test_cold_items_need_only_base_tags(tiny_llm):
    config = BetagConfig(num_groups=2, max_new_tokens=8, include_base_tags=False)
    (result,) = generate_betags(tiny_llm, [("new-item", ["documentary", "nature"])], config)
    assert len(result.beam_tags) == 2


def test_profiles_name_the_ablations_the_library_decodes():
    from dagster_betag.llm.betag import ABLATIONS
    from dagster_betag.profiles import ALL_ABLATIONS

    assert ALL_ABLATIONS == [variant.name for variant in ABLATIONS]
