"""Exclusive access to a part of the warehouse across processes (library code, no Dagster).

DuckDB allows one writer, and two runs generating the same item shard would write its rows
twice. Every writing step holds an OS file lock (released by the kernel if the process dies,
even by SIGKILL): a second run waits for it, then fails with one line naming the holder.

DuckDB also refuses a writer while another process has the file open read-only, and dbt fails
at once instead of waiting. So readers and the dbt build share a second lock: readers hold it
shared (``reading``), the build exclusively (``excluding_readers``). A build waits for the
readers in flight, and readers wait while it builds. Where ``fcntl`` is missing (Windows),
both are no-ops and a reader only retries while DuckDB's own lock is held.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# the readers' locks this thread holds exclusively: a step reading its own build's tables
# (row counts, previews) while it holds the lock must not wait for itself
class _HeldHere(threading.local):
    def __init__(self) -> None:
        self.excluding_readers: set[Path] = set()


_held_here = _HeldHere()


class WarehouseBusyError(RuntimeError):
    """Another run holds the lock longer than this one was willing to wait."""


@contextmanager
def exclusive(lock_path: Path, what: str, *, timeout_s: float, log=None) -> Iterator[None]:
    """Hold ``lock_path`` while the block runs; wait at most ``timeout_s`` seconds for it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path)
    owner_path = lock_path.with_suffix(".owner.json")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            log(f"{what}: waiting up to {timeout_s:.0f} s for another run ({_describe_owner(owner_path)})")
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise WarehouseBusyError(
                f"{what} is locked by another run ({_describe_owner(owner_path)}) for more than "
                f"{timeout_s:.0f} s; try again when it finishes (lock file {lock_path})"
            ) from None
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        owner_path.write_text(json.dumps(owner))
        yield
    finally:
        lock.release()


@contextmanager
def reading(lock_path: Path, what: str, *, timeout_s: float) -> Iterator[None]:
    """Hold ``lock_path`` shared with other readers while the block reads; wait at most
    ``timeout_s`` seconds while a writer holds it (``excluding_readers``)."""
    if fcntl is None or lock_path.resolve() in _held_here.excluding_readers:
        yield
        return
    with _flocked(lock_path, fcntl.LOCK_SH, what, timeout_s):
        yield


@contextmanager
def excluding_readers(lock_path: Path, what: str, *, timeout_s: float) -> Iterator[None]:
    """Hold ``lock_path`` exclusively: wait at most ``timeout_s`` seconds for the readers in
    flight to finish; new readers wait until the block ends."""
    if fcntl is None:
        yield
        return
    with _flocked(lock_path, fcntl.LOCK_EX, what, timeout_s):
        _held_here.excluding_readers.add(lock_path.resolve())
        try:
            yield
        finally:
            _held_here.excluding_readers.discard(lock_path.resolve())


@contextmanager
def _flocked(lock_path: Path, mode: int, what: str, timeout_s: float) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    side = "a writer" if mode == fcntl.LOCK_SH else "readers"
                    raise WarehouseBusyError(
                        f"{what} is held by {side} for more than {timeout_s:.0f} s; try again when "
                        f"they finish (lock file {lock_path})"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _describe_owner(owner_path: Path) -> str:
    try:
        owner = json.loads(owner_path.read_text())
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
