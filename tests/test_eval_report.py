"""The evaluation's bookkeeping: buckets, result rows, beam prefixes, the poster tables and
the claims the asset checks test, on hand-built inputs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from dagster_betag.evaluation.data import EvalData, EvaluationInputError, ItemBeams, UserSequence
from dagster_betag.evaluation.report import (
    Verdict,
    ablation_order,
    betag_comparison,
    cold_start_comparison,
    new_item_comparison,
    metric_value,
    poster_tables,
)
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


def results(values: dict[tuple[str, str, str], float], *, std_error: float = 0.01, n_users: int = 10) -> pl.DataFrame:
    """Test-split, full-ranking, all-user N@10 rows for (method, setting, source) cells."""
    rows = [
        {
            "split": "test", "protocol": "full", "bucket": "all", "metric": "N@10", "method": method,
            "setting": setting, "tag_source": source, "value": value, "std_error": std_error, "n_users": n_users,
            "n_candidates": 50, "seed": 0,
        }
        for (method, setting, source), value in values.items()
    ]  # fmt: skip
    return pl.DataFrame(rows)


def cells(per_source: dict[str, float]) -> dict[tuple[str, str, str], float]:
    return {(m, s, source): v for m in ("bm25", "birank") for s in ("user", "item") for source, v in per_source.items()}


def test_betag_claim_holds_only_when_betag_is_ahead_everywhere():
    ahead = cells({"betag": 0.3, "base": 0.2, "native": 0.3})
    claim = betag_comparison(results(ahead))
    assert claim.verdict is Verdict.HOLDS and claim.table.count("| yes |") == 4
    behind = dict(ahead)
    behind[("birank", "item", "native")] = 0.31
    claim = betag_comparison(results(behind))
    assert claim.verdict is Verdict.DOES_NOT_HOLD and claim.summary() == "does not hold"
    assert claim.table.count("| no |") == 1
    # the table shows each cell with its standard error, and the users it averages over
    assert "| birank | item | 0.3000 ±0.010 | 0.2000 ±0.010 | 0.3100 ±0.010 | no |" in claim.table
    assert "all users (10 users)" in claim.table


def test_ablation_order_needs_each_step_to_help():
    order = {"betag": 0.4, "betag_no_finetune": 0.3, "betag_one_beam": 0.35, "betag_neither": 0.2}
    assert ablation_order(results(cells(order))).verdict is Verdict.HOLDS
    flat = dict(order, betag_neither=0.3)  # without both as good as without finetuning
    assert ablation_order(results(cells(flat))).verdict is Verdict.DOES_NOT_HOLD


def test_a_claim_without_its_inputs_is_not_measured_never_failed():
    # a run that did not decode the ablations (the quick profile without --ablations)
    only_betag = ablation_order(results(cells({"betag": 0.4, "base": 0.3})))
    assert only_betag.verdict is Verdict.NOT_MEASURED and not only_betag.holds
    assert only_betag.summary() == "not measured (run with --ablations)"
    assert "| bm25 | user | 0.4000 ±0.010 | – | – | – | – |" in only_betag.table
    # one ablation missing is as unmeasured as all three
    one_missing = {"betag": 0.4, "betag_no_finetune": 0.3, "betag_neither": 0.2}
    assert ablation_order(results(cells(one_missing))).summary() == "not measured (run with --ablations)"
    no_native = betag_comparison(results(cells({"betag": 0.3, "base": 0.2})))
    assert no_native.summary() == "not measured (no native results)"
    gap = cells({"betag": 0.3, "base": 0.2, "native": 0.1})
    del gap[("birank", "item", "native")]
    assert betag_comparison(results(gap)).summary() == "not measured (no results for native birank item)"
    # the rows are all users': none is in the cold bucket
    cold = cold_start_comparison(results(cells({"betag": 0.3, "propagated": 0.2})))
    assert cold.summary() == "not measured (no cold bucket: no test user's target is a cold item)"


def test_the_new_item_claim_reads_the_new_bucket_only():
    frame = results(cells({"betag": 0.3, "propagated": 0.2}))
    assert new_item_comparison(frame).summary() == "not measured (no new bucket: no test user's target is a new item)"
    on_new = frame.with_columns(bucket=pl.lit("new"))
    assert new_item_comparison(on_new).verdict is Verdict.HOLDS
    behind = results(cells({"betag": 0.2, "propagated": 0.3})).with_columns(bucket=pl.lit("new"))
    assert new_item_comparison(behind).verdict is Verdict.DOES_NOT_HOLD


def poster_frame(per_source: dict[str, float], std_error: float) -> pl.DataFrame:
    """Table 1's cells, the same N@10 per source in every column, and Popular's."""
    popular = {("popular", s, "none"): 0.05 for s in ("user", "item")}
    return results(cells(per_source) | popular, std_error=std_error, n_users=74)


CAUTION = "caution: 74 users; no two tag sources differ by more than two standard errors"


def test_poster_tables_show_sources_as_rows_with_errors_users_and_seed_spread():
    frame = results(cells({"native": 0.1, "betag": 0.2}) | {("popular", s, "none"): 0.05 for s in ("user", "item")})
    seeds = results({("sasrec", "user", "none"): 0.3}, std_error=0.02).vstack(
        results({("sasrec", "user", "none"): 0.5}, std_error=0.04).with_columns(pl.lit(1, dtype=pl.Int64).alias("seed"))
    )
    text = poster_tables(pl.concat([frame, seeds], how="diagonal"))
    assert "| Popular (no tags) |" in text and "| native |" in text and "| betag |" in text
    assert "**Table 1: tag-based retrieval** (10 users)" in text and "**Table 2: recommendation** (10 users)" in text
    assert "| betag | – | 0.2000 ±0.010 |" in text
    # two seeds: their mean, ± the mean of their standard errors, and the sample sd over seeds
    assert "0.4000 ±0.030 (seeds sd 0.141)" in text
    assert text.count("± one standard error over users, sd/√n") == 2
    assert metric_value(frame, "popular", "user", "betag") == pytest.approx(0.05)


def test_caution_under_a_table_whose_sources_differ_less_than_the_noise():
    # 0.02 apart with standard errors of 0.02: under 2·√(0.02² + 0.02²) ≈ 0.057; Popular, 0.07
    # below betag, is further apart than that but no tag source, so it does not lift the caution
    noisy = poster_tables(poster_frame({"native": 0.10, "base": 0.11, "betag": 0.12}, std_error=0.02))
    assert CAUTION in noisy and "in any column — this table cannot separate them." in noisy
    # the same values with standard errors of 0.002 (about 100 times as many users) separate
    clear = poster_tables(poster_frame({"native": 0.10, "base": 0.11, "betag": 0.12}, std_error=0.002))
    assert "caution" not in clear


def test_caution_needs_every_column_to_be_noise():
    frame = poster_frame({"native": 0.10, "betag": 0.12}, std_error=0.02)
    one_clear_column = (pl.col("method") == "bm25") & (pl.col("setting") == "user") & (pl.col("tag_source") == "betag")
    frame = frame.with_columns(pl.when(one_clear_column).then(0.30).otherwise(pl.col("value")).alias("value"))
    assert "caution" not in poster_tables(frame)
    claim = betag_comparison(results(cells({"betag": 0.3, "base": 0.29, "native": 0.31}), std_error=0.02))
    assert "caution: 10 users;" in claim.table and "in any row" in claim.table


def test_the_asset_check_of_an_unmeasured_claim_warns_that_it_was_not_measured(monkeypatch, tmp_path):
    from dagster_betag.defs import checks
    from dagster_betag.defs.resources import WarehouseResource

    monkeypatch.setattr(checks, "load_results", lambda path: results(cells({"betag": 0.4, "base": 0.3})))
    result = checks.betag_ablation_order(warehouse=WarehouseResource(directory=str(tmp_path)))
    assert not result.passed and result.severity.value == "WARN"
    assert result.description == "the ablation order of Table 3: not measured (run with --ablations)"
    assert result.metadata["verdict"].value == "not measured"
    assert "| bm25 | user |" in result.metadata["comparison"].value

    def no_evaluation(path):
        raise EvaluationInputError("no evaluation in the warehouse yet")

    monkeypatch.setattr(checks, "load_results", no_evaluation)
    result = checks.betag_beats_base_and_native(warehouse=WarehouseResource(directory=str(tmp_path)))
    assert result.description.endswith(": not measured (no evaluation in the warehouse yet)")
