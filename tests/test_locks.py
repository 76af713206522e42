"""The warehouse's locks: one writer per part, and readers that a dbt build waits for.

flock locks belong to an open file, so two opens in one process conflict as two processes
would: threads stand in for the other process here; tests/test_faults.py has the real ones."""

from __future__ import annotations

import threading
import time

import pytest

from dagster_betag.locks import WarehouseBusyError, excluding_readers, reading


def hold_in_thread(context, seconds: float) -> threading.Thread:
    """Enter ``context`` in another thread and leave it after ``seconds``; returns once entered."""
    entered = threading.Event()

    def hold() -> None:
        with context:
            entered.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(10)
    return thread


def test_readers_share_and_a_writer_waits_for_them(tmp_path):
    lock = tmp_path / "locks" / "db.readers"
    first = hold_in_thread(reading(lock, "db", timeout_s=5), 0.6)
    with reading(lock, "db", timeout_s=0.1):  # a second reader enters at once
        pass
    started = time.monotonic()
    with excluding_readers(lock, "db", timeout_s=10):
        waited = time.monotonic() - started
    first.join()
    assert waited > 0.3  # the writer entered only after the reader left


def test_readers_wait_while_a_writer_holds_it_and_fail_in_one_line_past_the_timeout(tmp_path):
    lock = tmp_path / "db.readers"
    writer = hold_in_thread(excluding_readers(lock, "db", timeout_s=5), 1.0)
    with pytest.raises(WarehouseBusyError) as error:
        with reading(lock, "warehouse db", timeout_s=0.2):
            pass
    assert "held by a writer" in str(error.value) and "\n" not in str(error.value)
    with reading(lock, "db", timeout_s=10):  # and enters once the writer is done
        pass
    writer.join()


def test_a_writer_reading_its_own_build_does_not_wait_for_itself(tmp_path):
    lock = tmp_path / "db.readers"
    with excluding_readers(lock, "db", timeout_s=1):
        with reading(tmp_path / "." / "db.readers", "db", timeout_s=0.1):  # the same file, spelled otherwise
            pass
    # outside the block another thread's writer is not this one: readers wait for it again
    writer = hold_in_thread(excluding_readers(lock, "db", timeout_s=5), 0.5)
    with pytest.raises(WarehouseBusyError):
        with reading(lock, "db", timeout_s=0.1):
            pass
    writer.join()
