"""The evaluation's bookkeeping: buckets, result rows, beam prefixes, the poster tables and
the claims the asset checks test, on hand-built inputs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from dagster_betag.evaluation.data import PAIRED_SCHEMA, EvalData, EvaluationInputError, ItemBeams, RunResults, UserSequence
from dagster_betag.evaluation.metrics import METRICS
from dagster_betag.evaluation.report import (
    PairedEstimate,
    Verdict,
    ablation_order,
    betag_comparison,
    cold_start_comparison,
    new_item_comparison,
    metric_value,
    paired_estimate,
    poster_tables,
)
from dagster_betag.evaluation.tag_sources import registered_paired_comparisons, tag_source_names
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


def test_rank_rows_average_per_bucket_the_per_user_rows_they_keep():
    ranks = np.array([1, 3, 11, 2])
    targets = np.array([0, 1, 1, 2])
    buckets = np.array(["head", "cold", "mid"], dtype=object)
    rows = rank_rows(
        ranks, targets, buckets, ["u1", "u2", "u3", "u4"], split="test", protocol="full", setting="user",
        method="bm25", tag_source="betag", n_candidates=3, seed=0,
    )  # fmt: skip
    by_key = {(r.bucket, r.metric): r for r in rows.results}
    (users,) = rows.user_metrics
    assert users["user_id"].to_list() == ["u1", "u2", "u3", "u4"]
    assert users["bucket"].to_list() == ["head", "cold", "cold", "mid"]
    assert users["target_rank"].to_list() == [1, 3, 11, 2] and users["hit_at_10"].to_list() == [1, 1, 0, 1]
    assert set(users["tag_source"]) == {"betag"} and set(users["seed"]) == {0}
    for metric, column in (("H@10", "hit_at_10"), ("N@10", "ndcg_at_10")):
        assert by_key[("all", metric)].value == pytest.approx(users[column].mean())
        assert by_key[("cold", metric)].value == pytest.approx(users.filter(pl.col("bucket") == "cold")[column].mean())
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


def paired(
    differences: dict[tuple[str, str, str, str], float], *, std_error: float | None = 0.01, n_users: int = 10,
    bucket: str = "all", h_at_10: float | None = None,
) -> pl.DataFrame:
    """Test-split, full-ranking rows of marts.eval_paired_differences for (method, setting, a,
    b) cells, the same difference for H@10 and N@10 unless ``h_at_10`` gives H@10's."""
    rows = [
        {
            "run_id": "r", "split": "test", "protocol": "full", "setting": setting, "method": method,
            "tag_source_a": a, "tag_source_b": b, "bucket": bucket, "metric": metric, "seed": 0,
            "mean_difference": difference if metric == "N@10" or h_at_10 is None else h_at_10,
            "std_error": std_error, "n_users": n_users, "n_a_better": 0, "n_b_better": 0,
        }
        for (method, setting, a, b), difference in differences.items()
        for metric in METRICS
    ]  # fmt: skip
    return pl.DataFrame(rows, schema=PAIRED_SCHEMA)


def pairs(per_pair: dict[tuple[str, str], float]) -> dict[tuple[str, str, str, str], float]:
    return {(m, s, a, b): d for m in ("bm25", "birank") for s in ("user", "item") for (a, b), d in per_pair.items()}


def run(per_source: dict[str, float], per_pair: dict[tuple[str, str], float], **paired_options) -> RunResults:
    """A run that evaluated ``per_source`` (their eval_results cells) and paired ``per_pair``."""
    return RunResults(results(cells(per_source)), paired(pairs(per_pair), **paired_options))


BETAG_BASE_NATIVE = {"betag": 0.3, "base": 0.2, "native": 0.25}


def test_paired_verdict_needs_two_standard_errors_either_way():
    assert PairedEstimate(0.02, 0.01, 10).verdict is Verdict.HOLDS  # exactly 2 SE ahead
    assert PairedEstimate(0.019, 0.01, 10).verdict is Verdict.WITHIN_NOISE
    assert PairedEstimate(-0.019, 0.01, 10).verdict is Verdict.WITHIN_NOISE
    assert PairedEstimate(-0.02, 0.01, 10).verdict is Verdict.DOES_NOT_HOLD
    assert PairedEstimate(0.0, 0.0, 10).verdict is Verdict.WITHIN_NOISE  # identical rankings
    assert PairedEstimate(0.5, None, 1).verdict is Verdict.WITHIN_NOISE  # one user: no error to judge by


def test_betag_claim_holds_only_when_betag_is_two_paired_errors_ahead_everywhere():
    ahead = run(BETAG_BASE_NATIVE, {("betag", "base"): 0.1, ("betag", "native"): 0.05})
    claim = betag_comparison(ahead)
    assert claim.verdict is Verdict.HOLDS and claim.holds and claim.table.count("| holds |") == 8
    assert "| bm25 | user | N@10 | Δ +0.1000 ±0.010 | Δ +0.0500 ±0.010 | holds |" in claim.table
    assert "| bm25 | user | H@10 | Δ +0.1000 ±0.010 | Δ +0.0500 ±0.010 | holds |" in claim.table
    assert "| method | setting | metric | betag − base | betag − native | verdict |" in claim.table
    assert "all users (10 users)" in claim.table and "Δ ≥ 2·SE" in claim.table
    # H@10 counts as much as N@10: ahead on N@10 but behind on H@10 does not hold
    hits_behind = run(BETAG_BASE_NATIVE, {("betag", "base"): 0.1, ("betag", "native"): 0.05}, h_at_10=-0.03)
    assert betag_comparison(hits_behind).verdict is Verdict.DOES_NOT_HOLD
    # one cell within noise: not a pass, not a failure either
    noisy = ahead.paired.with_columns(
        pl.when((pl.col("method") == "birank") & (pl.col("tag_source_b") == "native"))
        .then(0.01).otherwise(pl.col("mean_difference")).alias("mean_difference")
    )  # fmt: skip
    claim = betag_comparison(RunResults(ahead.results, noisy))
    assert claim.verdict is Verdict.WITHIN_NOISE and not claim.holds and claim.summary() == "within noise"
    assert claim.table.count("| within noise |") == 4
    # one cell two errors behind: does not hold, whatever the rest
    behind = noisy.with_columns(
        pl.when((pl.col("method") == "bm25") & (pl.col("setting") == "item") & (pl.col("tag_source_b") == "base"))
        .then(-0.03).otherwise(pl.col("mean_difference")).alias("mean_difference")
    )  # fmt: skip
    claim = betag_comparison(RunResults(ahead.results, behind))
    assert claim.verdict is Verdict.DOES_NOT_HOLD and claim.summary() == "does not hold"
    assert "| bm25 | item | N@10 | Δ -0.0300 ±0.010 | Δ +0.0500 ±0.010 | does not hold |" in claim.table


def test_paired_cells_average_difference_and_error_over_seeds():
    frame = paired(pairs({("betag", "base"): 0.1}), std_error=0.02).vstack(
        paired(pairs({("betag", "base"): 0.04}), std_error=0.04).with_columns(pl.lit(1, dtype=pl.Int64).alias("seed"))
    )
    estimate = paired_estimate(frame, "betag", "base", "bm25", "user")
    assert estimate == PairedEstimate(pytest.approx(0.07), pytest.approx(0.03), 10)
    assert estimate.verdict is Verdict.HOLDS  # 0.07 >= 2 x 0.03


def test_ablation_order_needs_each_step_ahead_by_two_paired_errors():
    sources = {"betag": 0.4, "betag_no_finetune": 0.3, "betag_one_beam": 0.35, "betag_neither": 0.2}
    steps = {
        ("betag", "betag_no_finetune"): 0.1, ("betag", "betag_one_beam"): 0.05,
        ("betag_no_finetune", "betag_neither"): 0.1, ("betag_one_beam", "betag_neither"): 0.15,
    }  # fmt: skip
    assert ablation_order(run(sources, steps)).verdict is Verdict.HOLDS
    flat = dict(steps) | {("betag_no_finetune", "betag_neither"): 0.0}  # without both as good as without finetuning
    assert ablation_order(run(sources, flat)).verdict is Verdict.WITHIN_NOISE
    reversed_step = dict(steps) | {("betag_no_finetune", "betag_neither"): -0.1}
    assert ablation_order(run(sources, reversed_step)).verdict is Verdict.DOES_NOT_HOLD


def test_every_claimed_pair_is_in_the_registry_of_paired_comparisons():
    registered = {(c.a, c.b) for c in registered_paired_comparisons()}
    sources = set(tag_source_names())
    assert all(c.a in sources and c.b in sources for c in registered_paired_comparisons())
    for claim in (betag_comparison, cold_start_comparison, ablation_order):
        table = claim(run(BETAG_BASE_NATIVE, {})).table
        header = next(line for line in table.splitlines() if line.startswith("| method |"))
        claimed = {tuple(column.split(" − ")) for column in header.strip("| ").split(" | ") if " − " in column}
        assert claimed and claimed <= registered, claim.__name__


def test_a_claim_without_its_inputs_is_not_measured_never_failed():
    # a run that did not decode the ablations (the quick profile without --ablations)
    only_betag = ablation_order(run({"betag": 0.4, "base": 0.3}, {("betag", "base"): 0.1}))
    assert only_betag.verdict is Verdict.NOT_MEASURED and not only_betag.holds
    assert only_betag.summary() == "not measured (run with --ablations)"
    assert "| bm25 | user | N@10 | – | – | – | – | – |" in only_betag.table
    # one ablation missing is as unmeasured as all three
    one_missing = {"betag": 0.4, "betag_no_finetune": 0.3, "betag_neither": 0.2}
    steps = {("betag", "betag_no_finetune"): 0.1, ("betag_no_finetune", "betag_neither"): 0.1}
    assert ablation_order(run(one_missing, steps)).summary() == "not measured (run with --ablations)"
    no_native = betag_comparison(run({"betag": 0.3, "base": 0.2}, {("betag", "base"): 0.1}))
    assert no_native.summary() == "not measured (no native results)"
    gap = pairs({("betag", "base"): 0.1, ("betag", "native"): 0.1})
    del gap[("birank", "item", "betag", "native")]
    gapped = betag_comparison(RunResults(results(cells(BETAG_BASE_NATIVE)), paired(gap)))
    assert gapped.summary() == (
        "not measured (no paired differences for betag − native birank item H@10, betag − native birank item N@10)"
    )
    # a run evaluated before per-user rows were kept has results but no paired differences
    old_run = betag_comparison(RunResults(results(cells(BETAG_BASE_NATIVE)), paired({})))
    assert old_run.verdict is Verdict.NOT_MEASURED and "no paired differences for betag − base bm25 user H@10" in old_run.missing
    # the rows are all users': none is in the cold bucket
    cold = cold_start_comparison(run({"betag": 0.3, "propagated": 0.2}, {("betag", "propagated"): 0.1}))
    assert cold.summary() == "not measured (no cold bucket: no test user's target is a cold item)"


def test_the_new_item_claim_reads_the_new_bucket_only():
    per_source = {"betag": 0.3, "base": 0.2, "propagated": 0.2}
    ahead = {("betag", "base"): 0.1, ("betag", "propagated"): 0.1}
    on_all = run(per_source, ahead)
    assert new_item_comparison(on_all).summary() == "not measured (no new bucket: no test user's target is a new item)"
    on_new = RunResults(on_all.results.with_columns(bucket=pl.lit("new")), paired(pairs(ahead), bucket="new"))
    assert new_item_comparison(on_new).verdict is Verdict.HOLDS
    behind = {("betag", "base"): 0.1, ("betag", "propagated"): -0.1}
    on_new_behind = RunResults(on_new.results, paired(pairs(behind), bucket="new"))
    assert new_item_comparison(on_new_behind).verdict is Verdict.DOES_NOT_HOLD


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
    # the claims are judged on paired differences: no independent-samples caution under them
    claim = betag_comparison(run(BETAG_BASE_NATIVE, {("betag", "base"): 0.01, ("betag", "native"): 0.01}))
    assert "caution" not in claim.table


def test_the_asset_check_of_an_unmeasured_claim_warns_that_it_was_not_measured(monkeypatch, tmp_path):
    from dagster_betag.defs import checks
    from dagster_betag.defs.resources import WarehouseResource

    monkeypatch.setattr(checks, "load_run", lambda path: run({"betag": 0.4, "base": 0.3}, {("betag", "base"): 0.1}))
    result = checks.betag_ablation_order(warehouse=WarehouseResource(directory=str(tmp_path)))
    assert not result.passed and result.severity.value == "WARN"
    assert result.description == "the ablation order of Table 3: not measured (run with --ablations)"
    assert result.metadata["verdict"].value == "not measured"
    assert "| bm25 | user |" in result.metadata["comparison"].value

    def no_evaluation(path):
        raise EvaluationInputError("no evaluation in the warehouse yet")

    monkeypatch.setattr(checks, "load_run", no_evaluation)
    result = checks.betag_beats_base_and_native(warehouse=WarehouseResource(directory=str(tmp_path)))
    assert result.description.endswith(": not measured (no evaluation in the warehouse yet)")

    # within noise is its own wording, and no pass
    noisy = run(BETAG_BASE_NATIVE, {("betag", "base"): 0.01, ("betag", "native"): 0.05})
    monkeypatch.setattr(checks, "load_run", lambda path: noisy)
    result = checks.betag_beats_base_and_native(warehouse=WarehouseResource(directory=str(tmp_path)))
    assert not result.passed and result.description == "BETag ahead of base and native tags everywhere: within noise"
    assert result.metadata["verdict"].value == "within noise"
    assert "| bm25 | user | N@10 | Δ +0.0100 ±0.010 | Δ +0.0500 ±0.010 | within noise |" in result.metadata["comparison"].value
