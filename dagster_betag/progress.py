"""Progress for long work: a tqdm bar on a terminal, and rate + ETA lines for logs."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm


class Progress:
    """Counts finished units; reports ``done/total, units/s, ETA`` through ``log`` at most
    every ``log_every_s`` seconds (Dagster run logs), and draws a bar when stderr is a
    terminal (the command line)."""

    def __init__(self, total: int, what: str, log: Callable[[str], None], log_every_s: float = 15.0, unit: str = "item"):
        self.total, self.what, self.unit, self._log, self._log_every_s = total, what, unit, log, log_every_s
        self.done = 0
        self._started = self._last_log = time.perf_counter()
        self._bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=None, leave=False)

    def set_total(self, total: int) -> None:
        """For work whose size is known only once it starts (optimizer steps)."""
        self.total = self._bar.total = total

    def advance(self, n: int) -> None:
        self.done += n
        self._bar.update(n)
        now = time.perf_counter()
        if now - self._last_log >= self._log_every_s or self.done >= self.total:
            self._last_log = now
            self._log(self.summary())

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self._started, 1e-9)

    def summary(self) -> str:
        eta = (self.total - self.done) / self.rate if self.rate > 0 else float("inf")
        return f"{self.what}: {self.done}/{self.total} {self.unit}s, {self.rate:.2f} {self.unit}s/s, ETA {eta:.0f} s"

    def close(self) -> None:
        self._bar.close()


@dataclass(frozen=True)
class ProgressSummary:
    """A ``Progress.summary`` line read back (the console totals a step's work from them)."""

    what: str
    done: int
    total: int
    unit: str

    PATTERN = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)s, [\d.]+ (?P=unit)s/s, ETA ")

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @classmethod
    def parse(cls, line: str) -> ProgressSummary | None:
        match = cls.PATTERN.match(line)
        if match is None:
            return None
        return cls(match["what"], int(match["done"]), int(match["total"]), match["unit"])
