"""The Dagster UI for real: `dagster-webserver` in a subprocess, queried and driven over GraphQL.

What the in-process tests cannot see: that the code location loads in the webserver's own
code server, that the UI lists every asset, check, job, schedule and sensor that `defs`
defines, and that a run launched from the UI (through the run launcher, in a run worker
subprocess) builds the warehouse. bench/ui_screenshot.py reuses `running_webserver`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from dagster_betag import settings
from tests.synthetic import write_synthetic_movielens

# dagster_graphql's own client calls gql's deprecated keyword arguments, once per request
pytestmark = [pytest.mark.heavy, pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*")]

LOCATION = "dagster_betag"
# the steps run inside the run worker: a subprocess per step would import the definitions
# (torch included) once more for each of the two steps, ~10 s each on 2 cores
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
# runs start at once in the webserver's run launcher: the default queued coordinator would
# wait for a daemon that this test does not start
INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
nux:
  enabled: false
"""

WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } }
      }
    }
  }
}
"""

REPOSITORY_QUERY = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name }
        schedules { name }
        sensors { name }
        assetNodes {
          assetKey { path }
          assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

RUN_ERRORS_QUERY = """
query RunErrors($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ErrorEvent { error { message cause { message stack } } }
      }
    }
  }
}
"""

LATEST_MATERIALIZATION_QUERY = """
query Latest($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


def free_port() -> int:
    """A port nothing listens on now (the OS picks it, so parallel runs do not collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_instance(dagster_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML)


def tail(path: Path, n_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-n_chars:] if path.exists() else ""


@contextmanager
def running_webserver(
    env: dict[str, str], port: int, log_path: Path, timeout_s: float = 120, command: list[str] | None = None
) -> Iterator[DagsterGraphQLClient]:
    """`dagster-webserver -w workspace.yaml` (or ``command``, serving on ``port``) from the
    repository root, until the code location has loaded; on exit, the webserver and everything
    it spawned (code server, daemon, run workers) end.

    It runs in its own process group so that one signal reaches its children too; its output
    goes to a file, since a pipe nobody reads would block it once full.
    """
    webserver = Path(sys.executable).parent / "dagster-webserver"
    command = command or [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=settings.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
        wait_until_loaded(process, client, f"http://127.0.0.1:{port}/server_info", log_path, timeout_s)
        yield client
    finally:
        stop_process_group(process)


def wait_until_loaded(
    process: subprocess.Popen, client: DagsterGraphQLClient, server_info: str, log_path: Path, timeout_s: float
) -> None:
    """Poll until the webserver answers and its code location is LOADED, or fail with its log.

    /server_info answers before the code location has loaded, so the workspace is asked too.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {process.returncode}:\n{tail(log_path)}")
        if answers(server_info) and location_loaded(client):
            return
        time.sleep(0.5)
    raise TimeoutError(f"dagster-webserver did not load {LOCATION} in {timeout_s} s:\n{tail(log_path)}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def location_loaded(client: DagsterGraphQLClient) -> bool:
    """True once the location has loaded; a load error is raised at once, with its traceback."""
    workspace = client._execute(WORKSPACE_QUERY)["workspaceOrError"]
    entries = {entry["name"]: entry for entry in workspace.get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    loaded = entry["locationOrLoadError"]
    if loaded["__typename"] == "PythonError":
        stack = "".join(loaded["stack"])
        raise RuntimeError(f"code location {LOCATION} failed to load: {loaded['message']}\n{stack}")
    return True


def stop_process_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to the group (the webserver stops its code server), then SIGKILL to whatever is
    left after grace_s: a run worker can outlive the webserver that launched it."""
    signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the webserver: its zombie would keep the group alive
        if not signal_group(process.pid, 0):
            return
        time.sleep(0.2)
    signal_group(process.pid, signal.SIGKILL)
    process.wait()


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to the process group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ui(dbt_manifest, tmp_path_factory):
    """The webserver on a fresh instance, pointed at a synthetic dataset and an empty warehouse."""
    root = tmp_path_factory.mktemp("ui")
    dataset = write_synthetic_movielens(root / "dataset")
    write_instance(root / "dagster_home")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster_home"),
        settings.DATASET_ENV: str(dataset.folder),
        settings.WAREHOUSE_ENV: str(root / "warehouse"),
    }
    with running_webserver(env, free_port(), root / "webserver.log") as client:
        yield client, root / "warehouse"


def repository(client: DagsterGraphQLClient) -> dict:
    result = client._execute(REPOSITORY_QUERY)["repositoriesOrError"]
    assert result["__typename"] == "RepositoryConnection", result
    [repo] = [node for node in result["nodes"] if node["location"]["name"] == LOCATION]
    return repo


def names(entries: list[dict]) -> set[str]:
    return {entry["name"] for entry in entries}


def user_jobs(job_names) -> set[str]:
    """Without Dagster's implicit asset jobs (`__ASSET_JOB...`), which the UI hides too."""
    return {name for name in job_names if not name.startswith("__ASSET_JOB")}


def test_ui_lists_every_asset_check_job_schedule_and_sensor(ui, defs):
    client, _ = ui
    repo = repository(client)
    assets = {"/".join(node["assetKey"]["path"]): node for node in repo["assetNodes"]}
    checks = {
        (key, check["name"])
        for key, node in assets.items()
        for check in node["assetChecksOrError"].get("checks", [])
    }

    assert {
        "source/dataset_files",
        "landing/events",
        "llm/base_tags",
        "llm/finetune_examples",
        "llm/behavior_adapter",
        "llm/betags",
        "evaluation/eval_results",
        "marts/dim_items",
        "marts/fct_behavior_sessions",
        "marts/item_tag_documents",
        "marts/eval_results",
    } <= assets.keys()
    assert {
        ("llm/betags", "betag_beats_base_and_native"),
        ("llm/betags", "betag_ablation_order"),
        ("llm/betags", "betag_beats_propagated_on_cold"),
        ("llm/betags", "betag_beats_propagated_on_new"),
        ("marts/item_tag_documents", "llm_tag_documents_not_empty"),
        # dbt tests: a singular test and a generic one
        ("marts/fct_behavior_sessions", "assert_no_eval_targets_in_training_sessions"),
        ("marts/dim_items", "not_empty_dim_items_"),
    } <= checks
    assert {"betag_pipeline", "warehouse_build"} <= names(repo["jobs"])

    # and nothing more or less than the definitions hold
    assert assets.keys() == {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert checks == {
        (key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys
    }
    repository_def = defs.get_repository_def()
    assert user_jobs(names(repo["jobs"])) == user_jobs(job.name for job in repository_def.get_all_jobs())
    assert names(repo["schedules"]) == {schedule.name for schedule in repository_def.schedule_defs}
    assert names(repo["sensors"]) == {sensor.name for sensor in repository_def.sensor_defs}


def test_ui_launches_warehouse_build_into_the_warehouse(ui):
    client, warehouse = ui
    run_id = client.submit_job_execution("warehouse_build", repository_location_name=LOCATION, run_config=IN_PROCESS)
    status = wait_for_run(client, run_id, timeout_s=240)
    assert status == DagsterRunStatus.SUCCESS, run_errors(client, run_id)

    with duckdb.connect(str(warehouse / "betag.duckdb"), read_only=True) as connection:
        n_items = connection.execute("select count(*) from marts.dim_items").fetchone()[0]
    assert n_items > 0
    # the UI's asset page shows that run's materialization, with the row count the table has
    latest = client._execute(LATEST_MATERIALIZATION_QUERY, {"path": ["marts", "dim_items"]})["assetOrError"]
    [materialization] = latest["assetMaterializations"]
    assert materialization["runId"] == run_id
    metadata = {entry["label"]: entry.get("intValue") for entry in materialization["metadataEntries"]}
    assert metadata["dagster/row_count"] == n_items


def wait_for_run(client: DagsterGraphQLClient, run_id: str, timeout_s: float) -> DagsterRunStatus:
    """The run's status once it has finished, or its last status when timeout_s has passed."""
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + timeout_s
    status = client.get_run_status(run_id)
    while status not in finished and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_run_status(run_id)
    return status


def run_errors(client: DagsterGraphQLClient, run_id: str) -> str:
    """The run's error events and ERROR-level messages, as the UI's run page shows them."""
    logs = client._execute(RUN_ERRORS_QUERY, {"runId": run_id})["logsForRun"]
    lines = []
    for event in logs.get("events", []):
        error = event.get("error")
        if error or event.get("level") == "ERROR":
            lines.append(f"{event['__typename']} {event.get('stepKey')}: {event.get('message')}")
            # Dagster's own error wraps the asset's exception, which is what says what went wrong
            if error and error["cause"]:
                lines.append(error["cause"]["message"] + "".join(error["cause"]["stack"]))
    return "\n".join(lines) or f"no error events in run {run_id}"
