"""Atomic file replacement: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path_beside(target: Path) -> Path:
    """A unique hidden name beside ``target``: same filesystem, so the final rename is atomic."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename,
    on failure it is removed and ``target`` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temp_path_beside(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
