"""The tag vocabulary: spelling variants, instruction echoes, MiniLM merges, too-common tags,
and an extension that never moves a canonical tag chosen before."""

import pytest

from dagster_betag.evaluation.text_encoder import TextEncoder
from dagster_betag.llm.behavior import INSTRUCTION
from dagster_betag.llm.vocabulary import (
    ECHO,
    KEPT,
    SEMANTIC,
    SPELLING,
    TOO_COMMON,
    TagMap,
    VocabularyConfig,
    build_tag_map,
    singular,
    spelling_key,
)


@pytest.fixture(scope="module")
def encode():
    return TextEncoder().encode


def test_singular_rules_keep_words_that_are_not_plurals():
    assert [singular(w) for w in ("comedies", "heroes", "boxes", "dinosaurs", "witches")] == [
        "comedy", "hero", "box", "dinosaur", "witch"
    ]  # fmt: skip
    assert [singular(w) for w in ("thriller", "chess", "genius", "politics", "bus", "gas")] == [
        "thriller", "chess", "genius", "politics", "bus", "gas"
    ]  # fmt: skip
    assert spelling_key("sci-fi comedies") == spelling_key("sci fi comedy") == "sci fi comedy"
    # an ambiguous plural takes the form the vocabulary knows
    assert spelling_key("zombie movies", frozenset({"movie"})) == "zombie movie" != spelling_key("zombie movies")


def test_spelling_variants_join_the_most_frequent_spelling_without_an_encoder():
    tags = {"a": ["sci-fi", "dinosaurs"], "b": ["sci-fi", "dinosaur"], "c": ["sci fi", "dinosaurs"]}
    tag_map = build_tag_map(tags, VocabularyConfig(merge_threshold=None, max_item_share=None))
    assert tag_map.canonical("sci fi") == "sci-fi" and tag_map.mappings["sci fi"].reason == SPELLING
    assert tag_map.canonical("dinosaur") == "dinosaurs"
    assert tag_map.apply(["sci fi", "sci-fi", "dinosaur", "heist"]) == ["sci-fi", "dinosaurs", "heist"]
    # switched off, every spelling is its own tag
    plain = build_tag_map(tags, VocabularyConfig(unify_spelling=False, merge_threshold=None, max_item_share=None))
    assert plain.apply(["sci fi", "sci-fi"]) == ["sci fi", "sci-fi"]


def test_instruction_echoes_are_dropped_but_single_instruction_words_stay():
    tags = {"a": ["next likely item", "heist"], "b": ["user interactions", "item"], "c": ["recommendation"]}
    config = VocabularyConfig(merge_threshold=None, max_item_share=None)
    tag_map = build_tag_map(tags, config, instructions=[INSTRUCTION])
    assert tag_map.mappings["next likely item"].reason == ECHO and tag_map.canonical("user interactions") is None
    assert tag_map.canonical("heist") == "heist" and tag_map.canonical("recommendation") == "recommendation"
    # an unseen echo is caught too
    assert tag_map.canonical("predicting user interactions") is None


def test_semantic_merge_goes_into_the_more_frequent_tag_above_the_threshold(encode):
    tags = {
        "a": ["time travel", "heist"],
        "b": ["time travel", "bank robbery"],
        "c": ["time traveling", "ocean"],
        "d": ["time travel", "sea"],
        "e": ["ocean"],
    }
    tag_map = build_tag_map(tags, VocabularyConfig(merge_threshold=0.9, max_item_share=None), encode)
    merged = tag_map.mappings["time traveling"]
    assert merged.canonical_tag == "time travel" and merged.reason == SEMANTIC and merged.similarity >= 0.9
    assert tag_map.mappings["time travel"].reason == KEPT
    # unrelated tags stay apart at this threshold; a lower one merges more
    assert tag_map.canonical("heist") == "heist" and tag_map.canonical("sea") == "sea"
    looser = build_tag_map(tags, VocabularyConfig(merge_threshold=0.8, max_item_share=None), encode)
    assert len(looser.vocabulary()) < len(tag_map.vocabulary())
    assert looser.canonical("sea") == "ocean"  # the more frequent of the two
    # the vocabulary counts a canonical tag's items over its spellings
    assert tag_map.vocabulary(min_items=3) == ["time travel"] and "ocean" in tag_map.vocabulary(min_items=2)


def test_a_tag_on_too_many_items_is_junk_once_there_are_enough_items():
    tags = {f"i{n}": ["love", f"theme {n % 7}"] for n in range(60)}
    config = VocabularyConfig(merge_threshold=None, max_item_share=0.2, min_items_for_share=50)
    tag_map = build_tag_map(tags, config)
    assert tag_map.mappings["love"].reason == TOO_COMMON and tag_map.canonical("love") is None
    assert tag_map.canonical("theme 3") == "theme 3"  # on 1/7 of the items
    few = build_tag_map(dict(list(tags.items())[:10]), config)
    assert few.canonical("love") == "love"


def test_extension_maps_new_tags_without_moving_existing_ones(encode, tmp_path):
    config = VocabularyConfig(merge_threshold=0.9, max_item_share=None)
    first = build_tag_map({"a": ["time travel", "heist"], "b": ["time travel"]}, config, encode)
    path = tmp_path / "map.parquet"
    first.write(path, "cfg")
    stored, config_id = TagMap.read(path)
    assert config_id == "cfg" and stored.mappings == first.mappings
    # the new items use "time traveling" a lot; it still joins the canonical tag chosen before
    new_items = {"c": ["time traveling", "heists"], "d": ["time traveling"], "e": ["time traveling"]}
    grown = stored.extended(new_items, config, encode)
    assert all(grown.mappings[raw] == mapping for raw, mapping in first.mappings.items())
    assert grown.canonical("time traveling") == "time travel" and grown.canonical("heists") == "heist"
    assert stored.extended({"a": ["heist"]}, config, encode) is stored  # nothing new, nothing to do
    assert TagMap.read(tmp_path / "missing.parquet")[1] is None
