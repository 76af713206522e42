"""The evaluation's bookkeeping: buckets, result rows, beam prefixes, the poster tables and
the claims the asset checks test, on hand-built inputs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from dagster_betag.evaluation.data import EvalData, ItemBeams, UserSequence
from dagster_betag.evaluation.report import ablation_order, betag_comparison, metric_value, poster_tables
from dagster_betag.evaluation.runner import beam_prefix_documents, popularity_buckets, rank_rows


def catalog(popularity: list[int]) -> EvalData:
    """Items i0..iN whose train popularity is ``popularity`` (one user per interaction)."""
    item_ids = tuple(f"i{i}" for i in range(len(popularity)))
    users = tuple(
        UserSequence(f"u{i}-{k}", (item_ids[i],), item_ids[0], item_ids[0])
        for i, count in enumerate(popularity)
        for k in range(count)
    )
    return EvalData(item_ids, users)


def test_buckets_partition_the_catalog_by_train_popularity():
    data = catalog([9, 1, 5, 0, 3, 7, 2, 4, 6, 8])
    buckets = popularity_buckets(data, head_share=0.2, cold_share=0.5)
    assert [data.item_ids[i] for i in np.flatnonzero(buckets == "head")] == ["i0", "i9"]
    assert sorted(data.item_ids[i] for i in np.flatnonzero(buckets == "cold")) == ["i1", "i3", "i4", "i6", "i7"]
    assert (buckets == "mid").sum() == 3


def test_rank_rows_average_per_bucket():
    ranks = np.array([1, 3, 11, 2])
    targets = np.array([0, 1, 1, 2])
    buckets = np.array(["head", "cold", "mid"], dtype=object)
    rows = rank_rows(
        ranks, targets, buckets, split="test", protocol="full", setting="user", method="bm25",
        tag_source="betag", n_candidates=3, seed=0,
    )  # fmt: skip
    by_key = {(r.bucket, r.metric): r for r in rows}
    assert by_key[("all", "H@10")].value == pytest.approx(0.75)
    assert by_key[("all", "N@10")].value == pytest.approx((1 + 0.5 + 0 + 1 / math.log2(3)) / 4)
    assert by_key[("cold", "N@10")].value == pytest.approx(0.25) and by_key[("cold", "N@10")].n_users == 2
    assert by_key[("head", "H@10")].n_users == 1 and ("mid", "H@10") in by_key


def test_beam_prefixes_aggregate_the_base_beam_and_the_first_k_beams():
    beams = {"a": ItemBeams(base=(("drama", "war"),), generated=(("war", "epic"), ("epic",), ("comedy",)))}
    assert beam_prefix_documents(beams, 1, top_k=10) == {"a": ["war", "drama", "epic"]}
    assert beam_prefix_documents(beams, 2, top_k=2) == {"a": ["war", "epic"]}
    assert beam_prefix_documents(beams, 3, top_k=10)["a"][-1] == "comedy"


def results(values: dict[tuple[str, str, str], float]) -> pl.DataFrame:
    """Test-split, full-ranking, all-user N@10 rows for (method, setting, source) cells."""
    rows = [
        {
            "split": "test", "protocol": "full", "bucket": "all", "metric": "N@10", "method": method,
            "setting": setting, "tag_source": source, "value": value, "n_users": 10, "n_candidates": 50, "seed": 0,
        }
        for (method, setting, source), value in values.items()
    ]  # fmt: skip
    return pl.DataFrame(rows)


def cells(per_source: dict[str, float]) -> dict[tuple[str, str, str], float]:
    return {(m, s, source): v for m in ("bm25", "birank") for s in ("user", "item") for source, v in per_source.items()}


def test_betag_claim_holds_only_when_betag_is_ahead_everywhere():
    ahead = cells({"betag": 0.3, "base": 0.2, "native": 0.3})
    passed, table = betag_comparison(results(ahead))
    assert passed and table.count("| yes |") == 4
    behind = dict(ahead)
    behind[("birank", "item", "native")] = 0.31
    passed, table = betag_comparison(results(behind))
    assert not passed and table.count("| no |") == 1


def test_ablation_order_needs_each_step_to_help():
    order = {"betag": 0.4, "betag_no_finetune": 0.3, "betag_one_beam": 0.35, "betag_neither": 0.2}
    assert ablation_order(results(cells(order)))[0]
    flat = dict(order, betag_neither=0.3)  # without both as good as without finetuning
    assert not ablation_order(results(cells(flat)))[0]
    missing = {k: v for k, v in order.items() if k != "betag_one_beam"}
    assert not ablation_order(results(cells(missing)))[0]


def test_poster_tables_show_sources_as_rows_and_seed_spread():
    frame = results(cells({"native": 0.1, "betag": 0.2}) | {("popular", s, "none"): 0.05 for s in ("user", "item")})
    seeds = results({("sasrec", "user", "none"): 0.3}).vstack(
        results({("sasrec", "user", "none"): 0.5}).with_columns(pl.lit(1, dtype=pl.Int64).alias("seed"))
    )
    text = poster_tables(pl.concat([frame, seeds], how="diagonal"))
    assert "| Popular (no tags) |" in text and "| native |" in text and "| betag |" in text
    assert "0.4000±0.1414" in text  # two seeds: mean ± sample std
    assert metric_value(frame, "popular", "user", "betag") == pytest.approx(0.05)
