"""What the CLI prints while a job runs, on a small real Dagster job: one line per step, the
rest in the log file, and the event stream back with ``verbose``."""

from __future__ import annotations

import io
import warnings

import pytest
from dagster import DagsterInstance, job, op

from dagster_betag.console import LOGGER_NAME, RunConsole
from dagster_betag.progress import Progress, ProgressSummary


@op
def tag_items(context) -> int:
    for shard in range(2):  # two item shards, each with its own bar
        progress = Progress(3, "base tags", context.log.info)
        progress.advance(3)
        progress.close()
    warnings.warn("a library's deprecation notice", FutureWarning, stacklevel=1)
    return 6


@op
def evaluate(context, n_items: int) -> int:
    raise ValueError(f"no user has train, validation and test items among {n_items}")


@op
def report(context, n_users: int) -> None:
    context.log.info("never runs")


@job
def small_pipeline():
    report(evaluate(tag_items()))


def run_with_console(tmp_path, *, verbose: bool, capsys) -> tuple[str, str, str]:
    out = io.StringIO()
    console = RunConsole(tmp_path / "logs" / "run.log", verbose=verbose, out=out)
    with console.capturing():
        result = small_pipeline.with_logger_defs({LOGGER_NAME: console.logger_definition}).execute_in_process(
            instance=DagsterInstance.ephemeral(), raise_on_error=False, run_config={"loggers": {LOGGER_NAME: {}}}
        )
    assert not result.success
    return out.getvalue(), (tmp_path / "logs" / "run.log").read_text(), capsys.readouterr().err


def test_one_line_per_step_and_everything_in_the_log(tmp_path, capsys):
    printed, log, stderr = run_with_console(tmp_path, verbose=False, capsys=capsys)

    lines = printed.splitlines()
    assert len(lines) == 3, printed
    assert lines[0].split()[:2] == ["ok", "tag_items"] and lines[0].endswith("6 items, " + lines[0].split(", ")[-1])
    assert " items/s" in lines[0]
    # the failure in one line: the exception's class and message, no traceback, no module path
    assert lines[1].split()[:2] == ["FAILED", "evaluate"]
    assert lines[1].endswith("ValueError: no user has train, validation and test items among 6")
    assert lines[2].split()[:2] == ["skipped", "report"] and "upstream step failed" in lines[2]
    # the framework's events, the progress lines and the warning are in the log only
    assert "STEP_START" in log and "base tags: 3/3 items" in log and "FutureWarning" in log
    assert "STEP_START" not in stderr and "FutureWarning" not in stderr


def test_verbose_brings_the_event_stream_back(tmp_path, capsys):
    printed, log, stderr = run_with_console(tmp_path, verbose=True, capsys=capsys)

    assert len(printed.splitlines()) == 3  # the step lines as without it
    assert "base tags: 3/3 items" in stderr and "STEP_FAILURE" in stderr
    assert "FutureWarning" in stderr and "FutureWarning" in log


@pytest.mark.parametrize("done, total", [(3, 3), (1, 4)])
def test_a_progress_line_reads_back(done, total):
    progress = Progress(total, "LoRA finetuning", lambda _: None, unit="step")
    progress.advance(done)
    summary = ProgressSummary.parse(progress.summary())
    progress.close()

    assert summary == ProgressSummary("LoRA finetuning", done, total, "step")
    assert summary.finished == (done == total)
    assert ProgressSummary.parse("landed synth (movielens-latest) from /tmp: {'items': 32}") is None
