"""Does a decode carry behavior: behavior targets, in-sample fit, input sensitivity (llm/fit.py)."""

import math

import pytest

from dagster_betag.llm.fit import behavior_targets, mean_pairwise_jaccard, measure_fit

TAGS = {"a": ["x", "y"], "b": ["y", "z"], "c": ["z", "w"], "d": []}


def test_behavior_targets_weigh_successor_tags_by_transitions():
    successors = {"a": [("b", 3), ("c", 1)], "b": [("c", 2), ("d", 5)], "d": [("d", 1)], "c": [("zz", 4)]}
    targets = behavior_targets(successors, TAGS)
    # a: y 3, z 3 + 1 = 4, w 1 -> z, y, w; ties keep first appearance (successors most frequent first)
    assert targets["a"] == ["z", "y", "w"]
    assert behavior_targets(successors, TAGS, max_tags=2)["a"] == ["z", "y"]
    assert targets["b"] == ["z", "w"]  # d has no tags, so its 5 transitions add nothing
    # no tagged successor (d's only successor is untagged; c's is unknown): no target at all
    assert "d" not in targets and "c" not in targets


def test_idf_weighted_targets_prefer_the_rarer_successor_tags():
    tags = {"a": ["x", "common"], "b": ["common", "rare"], "c": ["common", "x"], "d": ["common"]}
    successors = {"a": [("b", 1), ("c", 1), ("d", 1)]}
    # by transitions, the tag all three successors hold comes first
    assert behavior_targets(successors, tags)["a"][0] == "common"
    # idf: common ln(4/4) = 0, rare ln(4/1), x ln(4/2)
    assert behavior_targets(successors, tags, weighting="transitions_idf")["a"] == ["rare", "x", "common"]
    with pytest.raises(ValueError, match="unknown target weighting"):
        behavior_targets(successors, tags, weighting="lift")


def test_in_sample_fit_and_input_sensitivity_with_their_references():
    generated = {"a": [["z", "q"], ["y"]], "b": [["q"]], "c": [["z", "q"]]}
    base = {"a": ["x", "y"], "b": ["y", "z"], "c": ["z", "w"]}
    targets = {"a": ["z", "y", "w", "v"], "b": ["z", "w"]}
    measures = measure_fit(generated, base, targets)
    assert (measures.n_items, measures.n_target_items) == (3, 2)
    # a: {z, y} of 4 = 0.5; b: {} of 2 = 0
    assert measures.in_sample_fit == pytest.approx(0.25)
    # base tags: a holds y (1/4), b holds z (1/2)
    assert measures.in_sample_fit_of_base_tags == pytest.approx((0.25 + 0.5) / 2)
    # the other item's beams: a against b's {q} = 0; b against a's {z, q, y} = 1/2
    assert measures.in_sample_fit_of_other_items == pytest.approx(0.25)
    # beams {z,q,y} {q} {z,q}: J = 1/3, 2/3, 1/2
    assert measures.beam_jaccard == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # base {x,y} {y,z} {z,w}: 1/3, 0, 1/3
    assert measures.base_tag_jaccard == pytest.approx(2 / 9)
    assert set(measures.metadata()) == set(vars(measures))


def test_pairwise_jaccard_samples_large_sets_and_handles_edge_cases():
    assert math.isnan(mean_pairwise_jaccard([{"a"}]))
    assert mean_pairwise_jaccard([set(), set()]) == 1.0
    identical = [{"a", "b"}] * 300  # 44,850 pairs: sampled
    assert mean_pairwise_jaccard(identical, max_pairs=500) == 1.0
    disjoint = [{str(i)} for i in range(300)]
    assert mean_pairwise_jaccard(disjoint, max_pairs=500) == 0.0
