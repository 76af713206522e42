"""The aggregation levers the evaluation measures from the stored beams (top-K, tag weights, idf),
weighted retrieval, and the catalog every tag source is compared on."""

from dagster_betag.evaluation.data import EvalData, ItemBeams, UserSequence
from dagster_betag.evaluation.retrieval import rank_targets
from dagster_betag.evaluation.runner import (
    EvaluationConfig,
    betag_variant_documents,
    generic_tags,
    llm_tagged_items,
)

BEAMS = {
    "a": ItemBeams(base=(("heist", "crime"),), generated=(("crime", "gangster"), ("crime", "heist", "noir"))),
    "b": ItemBeams(base=(("space",),), generated=(("space", "robot"), ("alien", "robot"))),
}


def test_variants_re_aggregate_all_beams_with_top_k_and_beam_weights():
    config = EvaluationConfig(top_ks=(1, 10), generic_tag_share=None, idf_betags=False)
    variants = betag_variant_documents(BEAMS, top_k=3, config=config)
    assert set(variants) == {"betag:top1", "betag:top10", "betag:weighted"}
    assert variants["betag:top1"] == {"a": ["crime"], "b": ["space"]}
    assert variants["betag:top10"]["a"] == ["crime", "heist", "gangster", "noir"]
    # weights are the beams that wrote the tag, base-tag beam included, for the generation's top-K
    assert variants["betag:weighted"]["a"] == [("crime", 3.0), ("heist", 2.0), ("gangster", 1.0)]
    assert "betag:weighted" not in betag_variant_documents(BEAMS, 3, EvaluationConfig(weighted_betags=False))


def test_specific_variant_drops_generated_tags_most_items_get_but_keeps_base_tags():
    beams = {
        **BEAMS,
        "c": ItemBeams(base=(("robot",),), generated=(("crime", "robot"), ("desert",))),
    }
    # "crime" and "robot" are generated for 2 of 3 items (> 0.5); "heist" is generated for one
    assert generic_tags(beams, 0.5) == {"crime", "robot"}
    specific = betag_variant_documents(beams, 10, EvaluationConfig(top_ks=(), generic_tag_share=0.5))["betag:specific"]
    assert specific["a"] == ["heist", "gangster", "crime", "noir"]  # crime stays, from the base-tag beam only
    assert specific["c"] == ["robot", "desert"]


def test_idf_variant_ranks_beams_times_inverse_item_frequency():
    """The hand-made case the SQL twin's unit test holds too (int_betag_tags_ranked.yml)."""
    beams = {**BEAMS, "c": ItemBeams(base=(("robot",),), generated=(("crime", "robot"), ("desert",)))}
    config = EvaluationConfig(top_ks=(10,), weighted_betags=False, generic_tag_share=None)
    # crime and robot are generated for 2 of 3 items (idf ln 3/2), the rest for one (ln 3); heist's
    # 2 beams x ln 3 beat crime's 3 x ln 3/2, though counts put crime first
    assert betag_variant_documents(beams, 10, config)["betag:top10"]["a"] == ["crime", "heist", "gangster", "noir"]
    idf = betag_variant_documents(beams, 10, config)["betag:idf"]
    assert idf == {
        "a": ["heist", "crime", "gangster", "noir"],
        "b": ["space", "alien", "robot"],
        "c": ["desert", "robot", "crime"],
    }
    assert {item: tags[:2] for item, tags in betag_variant_documents(beams, 2, config)["betag:idf"].items()} == {
        item: tags[:2] for item, tags in idf.items()
    }
    assert "betag:idf" not in betag_variant_documents(beams, 2, EvaluationConfig(idf_betags=False))


def test_weights_change_the_ranking_where_counts_cannot():
    # the query is q's document: "robot" and "heist" once each as counts, robot three times
    # heavier as weights; the target y holds "robot", the other candidate x "heist"
    fillers = {f"f{n}": [f"filler {n}"] for n in range(4)}  # so that robot and heist are rare terms
    data = EvalData(("h", "q", "x", "y", *fillers), (UserSequence("u", ("h",), "q", "y"),))
    plain = {"h": ["desert"], "q": ["robot", "heist"], "x": ["heist"], "y": ["robot"], **fillers}
    weighted = {**plain, "q": [("robot", 3.0), ("heist", 1.0)]}
    for method in ("bm25", "birank"):
        ranks = [rank_targets(data, docs, method, "item", "test").ranks[0] for docs in (plain, weighted)]
        assert ranks == [2, 1], method  # a tie, broken against the target; then the weight decides


def test_catalog_is_the_base_tagged_items_with_betags():
    data = EvalData(("a", "b", "c", "d"), ())
    documents = {
        "base_raw": {"a": ["x"], "b": ["y"], "c": ["z"], "d": []},
        "base": {"a": ["x"], "b": [], "c": ["z"], "d": []},  # b's tags were all junk: still generated
        "betag": {"a": ["x"], "b": ["y"], "c": [], "d": ["w"]},
    }
    assert llm_tagged_items(data, documents) == ["a", "b"]
    assert llm_tagged_items(data, {"base": documents["base"]}) == ["a", "c"]
