"""Exclusive access to a part of the warehouse across processes (library code, no Dagster).

DuckDB allows one writer, and two runs generating the same item shard would write its rows
twice. Every writing step holds an OS file lock (released by the kernel if the process dies,
even by SIGKILL): a second run waits for it, then fails with one line naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


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


def _describe_owner(owner_path: Path) -> str:
    try:
        owner = json.loads(owner_path.read_text())
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"
