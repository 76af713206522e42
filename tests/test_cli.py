"""The `betag` console script as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from dagster_betag import settings
from tests.test_ui import free_port, running_webserver

BETAG = Path(sys.executable).parent / "betag"
# dagster_graphql's own client calls gql's deprecated keyword arguments, once per request
pytestmark = [pytest.mark.heavy, pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*")]

RUNS_QUERY = """
query {
  runsOrError {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
  }
}
"""

LATEST_METADATA_QUERY = """
query Latest($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { label } } }
  }
}
"""

CHECK_QUERY = """
query Check($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 1) {
    runId
    status
    evaluation { success description }
  }
}
"""


def user_environment(dagster_home: Path | None = None) -> dict[str, str]:
    """The environment a user's shell has: none of the variables the tests point things with."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (settings.DATASET_ENV, settings.WAREHOUSE_ENV, settings.MODEL_ENV, settings.DAGSTER_HOME_ENV)
    }
    # the runs go to a throwaway instance, not to the repository's .dagster_home
    return env | ({settings.DAGSTER_HOME_ENV: str(dagster_home)} if dagster_home else {})


def run_betag(*args: str, timeout: int = 300, dagster_home: Path | None = None) -> subprocess.CompletedProcess:
    env = user_environment(dagster_home)
    return subprocess.run([str(BETAG), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(ml_latest_small, tiny_model_dir, tmp_path_factory):
    """`betag run` on the default dataset with the tiny model and the ablations, into its own
    warehouse and Dagster instance: (the finished process, warehouse folder, instance folder)."""
    root = tmp_path_factory.mktemp("quick-run")
    warehouse, dagster_home = root / "warehouse", root / "dagster_home"
    completed = run_betag(
        "run", "--dataset", str(ml_latest_small), "--warehouse", str(warehouse), "--model", str(tiny_model_dir),
        "--ablations", dagster_home=dagster_home,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed, warehouse, dagster_home


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


def test_run_builds_the_default_dataset_and_reports_its_figures(quick_run, ml_latest_small):
    completed, warehouse, _ = quick_run
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


def test_the_console_shows_one_line_per_step_and_the_event_log_keeps_the_rest(quick_run):
    completed, warehouse, _ = quick_run
    [log_path] = (warehouse / "logs").glob("run-*.log")
    log = log_path.read_text()
    assert f"betag: event log {log_path}" in completed.stdout
    lines = completed.stdout.splitlines()
    step_lines = [line for line in lines if line.startswith("  ok ")]
    assert any(" llm/base_tags " in line and " items/s" in line for line in step_lines)
    assert any(" llm/behavior_adapter " in line and " steps/s" in line for line in step_lines)
    printed = {line.split()[1] for line in step_lines}
    assert {"landing_tables", "warehouse_models", "llm/betags", "evaluation/eval_results"} <= printed
    # until the summary, the console fits on a screen: the framework's events stay in the log
    until_summary = lines[: next(i for i, line in enumerate(lines) if line.startswith("Done in"))]
    assert len(until_summary) < 40, "\n".join(until_summary)
    assert "STEP_START" in log and "STEP_START" not in completed.stdout + completed.stderr
    # library warnings and dbt's output are in the log, not on the console
    assert "Warning" in log and "Warning" not in completed.stdout + completed.stderr
    assert " of " in log and "dbt build" not in completed.stdout
    assert completed.stderr == ""


def test_betag_ui_shows_the_run_of_betag_run(quick_run, tmp_path):
    _, warehouse, dagster_home = quick_run
    port = free_port()
    command = [str(BETAG), "ui", "--warehouse", str(warehouse), "-h", "127.0.0.1", "-p", str(port)]
    with running_webserver(user_environment(dagster_home), port, tmp_path / "ui.log", 240, command) as client:
        runs = client._execute(RUNS_QUERY)["runsOrError"]["results"]
        latest = {
            "/".join(path): client._execute(LATEST_METADATA_QUERY, {"path": path})["assetOrError"]
            for path in (["llm", "betags"], ["llm", "behavior_adapter"], ["marts", "eval_results"])
        }
        check = client._execute(CHECK_QUERY, {"path": ["llm", "betags"], "name": "betag_beats_base_and_native"})

    [run] = [r for r in runs if {"key": "launched_by", "value": "betag run"} in r["tags"]]
    assert run["jobName"] == "betag_pipeline" and run["status"] == "SUCCESS"
    for key, asset in latest.items():
        [materialization] = asset["assetMaterializations"]
        assert materialization["runId"] == run["runId"], key
        assert materialization["metadataEntries"], f"{key} has no metadata in the UI"
    labels = {entry["label"] for entry in latest["llm/behavior_adapter"]["assetMaterializations"][0]["metadataEntries"]}
    assert {"loss_curve", "validation_loss_after"} <= labels
    [execution] = check["assetCheckExecutions"]
    assert execution["runId"] == run["runId"] and execution["evaluation"] is not None


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
