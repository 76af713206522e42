"""The `betag` console script as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl

from dagster_betag import settings

BETAG = Path(sys.executable).parent / "betag"


def run_betag(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (settings.DATASET_ENV, settings.WAREHOUSE_ENV, settings.MODEL_ENV)
    }
    return subprocess.run([str(BETAG), *args], capture_output=True, text=True, env=env, timeout=timeout)


def independent_five_core(ratings_csv: Path) -> pl.DataFrame:
    """The 5-core of a ratings file, computed with polars instead of SQL."""
    ratings = pl.read_csv(ratings_csv, columns=["userId", "movieId"])
    while True:
        kept = ratings.filter(
            (pl.len().over("userId") >= 5) & (pl.len().over("movieId") >= 5)
        )
        if kept.height == ratings.height:
            return kept
        ratings = kept


def test_run_builds_the_default_dataset_and_reports_its_figures(ml_latest_small, tiny_model_dir, tmp_path):
    warehouse = tmp_path / "warehouse"
    completed = run_betag(
        "run", "--dataset", str(ml_latest_small), "--warehouse", str(warehouse), "--model", str(tiny_model_dir),
        "--ablations",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]

    core = independent_five_core(ml_latest_small / "ratings.csv")
    n_users, n_items = core["userId"].n_unique(), core["movieId"].n_unique()
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        figures = dict(
            connection.execute(
                "select split, count(*) from marts.fct_interactions group by split"
            ).fetchall()
        )
        assert sum(figures.values()) == core.height
        assert figures["test"] == figures["validation"] == n_users
        assert connection.execute("select count(*) from marts.dim_items where is_in_kcore").fetchone()[0] == n_items
    # the summary a user reads ends the output: where the tables are, the counts, samples
    assert str(warehouse / "betag.duckdb") in completed.stdout
    assert f"{n_users:,} users, {n_items:,} items, {core.height:,} interactions" in completed.stdout
    assert "quarantined input rows: 0" in completed.stdout
    assert "| session_id |" in completed.stdout
    # the quick profile tags the 200 most popular k-core items with base tags and BETags
    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        n_tagged = connection.execute("select count(distinct item_id) from marts.item_betag_beams").fetchone()[0]
    assert n_tagged == 200
    assert "Base tags and BETags of the most popular items" in completed.stdout
    # and the evaluation, in the layout of the poster's tables, again on demand
    assert "Table 1: tag-based retrieval" in completed.stdout
    again = run_betag("results", "--warehouse", str(warehouse))
    assert again.returncode == 0, again.stderr
    assert "Table 1: tag-based retrieval" in again.stdout and "Table 3: ablations" in again.stdout
    missing = run_betag("results", "--warehouse", str(warehouse), "--run-id", "no-such-run")
    assert missing.returncode == 1 and missing.stderr.startswith("betag: error: no evaluation results")


def test_run_without_a_dataset_fails_in_one_line(tmp_path):
    completed = run_betag("run", "--dataset", str(tmp_path / "missing"), "--warehouse", str(tmp_path / "wh"))
    assert completed.returncode == 1
    assert completed.stderr.startswith("betag: error:") and completed.stderr.count("\n") == 1
    assert not (tmp_path / "wh").exists()


def test_fetch_data_without_network_fails_in_one_line(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = run_betag(
        "fetch-data", "--dest", str(tmp_path), "--url", f"http://127.0.0.1:{port}/ml-latest-small.zip", timeout=60
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("betag: error:") and completed.stderr.count("\n") == 1
    assert "Traceback" not in completed.stderr


def test_library_modules_do_not_import_dagster():
    code = (
        "import sys, dagster_betag.datasets, dagster_betag.settings, dagster_betag.warehouse, "
        "dagster_betag.evaluation.runner, dagster_betag.evaluation.report; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_dbt')], 'dagster imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
