"""Durable, atomic file replacement: a reader sees the old file or the new one, never half
of one, and after a power cut a published name never points at a file whose bytes were lost.

A rename is atomic but not durable by itself: the kernel may write the new directory entry
before the file's data, so after a power cut the name can point at a zero-length or partial
file. Hence the order here: write, fsync the file, rename, fsync the folder.

A write that runs out of space becomes a ``DiskFullError`` of one line naming the path and
the free space; nothing is published, and a rerun after space is freed resumes.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DiskFullError(OSError):
    """A write that ran out of space, in one line: which path, how much space is left."""

    def __init__(self, path: Path):
        self.path = path
        self.message = (
            f"no space left to write {path} ({_free_space(path)} free on its disk); "
            "free some space and run again: it resumes from the shards already written"
        )
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


def temp_path_beside(target: Path) -> Path:
    """A unique hidden name beside ``target``: same filesystem, so the final rename is atomic."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` durably (fsync of the
    file, one rename, fsync of the folder), on failure it is removed and ``target`` is untouched."""
    temporary = temp_path_beside(target)
    try:
        with disk_full_named(target):
            make_folders(target.parent)
            yield temporary
            durable_rename(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def durable_rename(source: Path, target: Path) -> None:
    """Rename the complete file ``source`` to ``target`` so that it survives a power cut: its
    bytes reach the disk before the name does, and the new name is on disk when this returns."""
    fsync_path(source)
    os.replace(source, target)
    fsync_path(target.parent)
    if source.parent != target.parent:
        fsync_path(source.parent)


def make_folders(folder: Path) -> None:
    """``mkdir -p`` whose new folders survive a power cut (each one's entry fsynced in its parent)."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (for a folder: its entries) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def disk_full_named(path: Path) -> Iterator[None]:
    """Turn running out of space while writing ``path`` into a ``DiskFullError``. Polars reports
    it as a ComputeError ("No space left on device (os error 28)"), Python and pyarrow as OSError ENOSPC."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        if _is_disk_full(error):
            raise DiskFullError(path) from error
        raise


def _is_disk_full(error: Exception) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return os.strerror(errno.ENOSPC) in str(error)  # "No space left on device", whoever wraps it


def _free_space(path: Path) -> str:
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    free = float(shutil.disk_usage(existing).free)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024:
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"
