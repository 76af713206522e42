"""What `betag run` and `betag refresh` print while a job runs: one line per finished step
(its time, and for the LLM stages how much work at what rate), a transient progress bar with
ETA while a stage runs, then the summary. Everything else goes to the run's log file under
the warehouse: Dagster's whole event stream (DEBUG and up), dbt's output, library warnings.
With ``verbose`` the event stream is printed too, as `dagster` prints it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dagster import LoggerDefinition
from tqdm import tqdm

from dagster_betag.progress import ProgressSummary

# Dagster's own console format, so the log file reads like `dagster dev`'s output
EVENT_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
# the run-config name of the logger that replaces Dagster's console logger in CLI runs
LOGGER_NAME = "betag_console"


@dataclass
class StepWork:
    """What a step's finished progress bars counted, summed over item shards and variants."""

    done: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # unit -> units

    def describe(self, seconds: float) -> str:
        return ", ".join(f"{n:,} {unit}s, {n / max(seconds, 1e-9):.2f} {unit}s/s" for unit, n in self.done.items())


class StepLines(logging.Handler):
    """Turns Dagster's structured events into one line per finished step, and counts the data
    tests (asset checks); warnings and errors a step logs itself are printed as they come."""

    # how Dagster says that a step was left out because a step it depends on failed
    NOT_EXECUTED = re.compile(r"^Dependencies for step \S+ (failed|were not executed)")

    def __init__(self, out: io.TextIOBase):
        super().__init__(level=logging.DEBUG)
        self._out = out
        self._work: dict[str, StepWork] = defaultdict(StepWork)
        self._materialized: set[str] = set()
        self._checked: set[str] = set()
        self.check_results: list = []  # AssetCheckEvaluation, in the order they ran

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        step, event = meta.get("step_key"), meta.get("dagster_event")
        if event is None:
            self._user_message(step, meta.get("orig_message") or record.getMessage(), record)
            return
        kind = event.event_type_value
        if kind == "ASSET_MATERIALIZATION":
            self._materialized.add(step)
        elif kind == "ASSET_CHECK_EVALUATION":
            self._checked.add(step)
            self.check_results.append(event.asset_check_evaluation_data)
        elif kind == "STEP_SUCCESS" and not (step in self._checked and step not in self._materialized):
            seconds = event.event_specific_data.duration_ms / 1000
            work = self._work[step].describe(seconds)
            self._print(f"  ok      {step_label(step):<34} {seconds:7.1f} s" + (f"   {work}" if work else ""))
        elif kind == "STEP_FAILURE":
            self._print(f"  FAILED  {step_label(step):<34} {error_line(event.step_failure_data.error)}")

    def _user_message(self, step: str | None, message: str, record: logging.LogRecord) -> None:
        if (summary := ProgressSummary.parse(message)) and summary.finished and step:
            self._work[step].done[summary.unit] += summary.done
        elif step and self.NOT_EXECUTED.match(message):
            self._print(f"  skipped {step_label(step):<34} (an upstream step failed)")
        elif record.levelno >= logging.WARNING:
            self._print(f"  {record.levelname.lower()}: {step_label(step or 'run')}: {message}")

    def _print(self, line: str) -> None:
        tqdm.write(line, file=self._out)
        self._out.flush()  # a line as it happens, also when the console is a pipe or a file


def error_line(error) -> str:
    """The first line of the exception a step raised (``SerializableErrorInfo``), its class
    without its module: ``EvaluationInputError: no user has ...``."""
    message = (error.cause or error).message.strip().splitlines()[0]
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", message)


def step_label(step_key: str) -> str:
    """A step as its asset key reads (``llm__base_tags`` -> ``llm/base_tags``)."""
    return step_key.replace("__", "/")


class DbtOutput(io.TextIOBase):
    """Where dbt's console output goes during a run: the log file, and a transient progress
    bar over the nodes of each `dbt build` (restarted when the next invocation starts)."""

    NODE_DONE = re.compile(r"^\s*(\d+) of (\d+) (OK|PASS|FAIL|ERROR|WARN|SKIP)\b")

    def __init__(self, log: io.TextIOBase):
        self._log = log
        self._bar = None

    def write(self, text: str) -> int:
        self._log.write(text)
        for line in text.splitlines():
            if match := self.NODE_DONE.match(line):
                if self._bar is None or self._bar.total != int(match.group(2)) or self._bar.n >= self._bar.total:
                    self._close_bar()
                    self._bar = tqdm(total=int(match.group(2)), desc="dbt build", unit="node",
                                     file=sys.stderr, disable=None, leave=False)  # fmt: skip
                self._bar.update(1)
        return len(text)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        super().close()


class RunConsole:
    """The console and log file of one CLI run; enter it around the run, and pass
    ``logger_definition`` to the job (``LOGGER_NAME`` in the run config's loggers)."""

    def __init__(self, log_path: Path, *, verbose: bool, out: io.TextIOBase | None = None):
        self.log_path, self.verbose = log_path, verbose
        self.steps = StepLines(out or sys.stdout)

    @property
    def logger_definition(self) -> LoggerDefinition:
        return LoggerDefinition(lambda _: self._logger, description="betag's console and run log file")

    @contextlib.contextmanager
    def capturing(self) -> Iterator[RunConsole]:
        """Route Python warnings, transformers' messages and bars, and dbt's stdout to the log
        file (and, verbose, to the terminal as well) until the run ends."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w", encoding="utf-8") as log, DbtOutput(log) as dbt_output:
            file_handler = _event_handler(log, logging.DEBUG)
            echo = _event_handler(sys.stderr, logging.INFO) if self.verbose else None
            self._logger = logging.Logger("dagster", level=logging.DEBUG)
            for handler in (file_handler, self.steps, echo):
                if handler is not None:
                    self._logger.addHandler(handler)
            with _library_output_to(file_handler, echo), contextlib.redirect_stdout(dbt_output):
                yield self


def _event_handler(stream: io.TextIOBase, level: int) -> logging.Handler:
    """Records written in Dagster's console format."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(EVENT_FORMAT))
    handler.setLevel(level)
    return handler


@contextlib.contextmanager
def _library_output_to(log_file: logging.Handler, echo: logging.Handler | None) -> Iterator[None]:
    """Warnings (``warnings.warn``) and transformers' log lines go to the log file, and to the
    terminal only with ``echo`` (verbose), when transformers' own progress bars stay on too."""
    from transformers.utils import logging as transformers_logging

    warnings_logger = logging.getLogger("py.warnings")
    library_logger = transformers_logging.get_logger()  # the "transformers" root logger
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    handlers = [log_file, *([echo] if echo else [])]
    logging.captureWarnings(True)
    warnings_logger.propagate = False
    for handler in handlers:
        warnings_logger.addHandler(handler)
    library_logger.addHandler(log_file)
    if echo is None:
        transformers_logging.disable_default_handler()
        transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each distinct warning once
            yield
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            warnings_logger.removeHandler(handler)
        warnings_logger.propagate = True
        library_logger.removeHandler(log_file)
        transformers_logging.enable_default_handler()
        if bars_were_on:
            transformers_logging.enable_progress_bar()
