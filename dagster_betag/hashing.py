"""Stable hashes: the ids of run keys, configs and files (library code, no Dagster).

Python's ``hash`` is salted per process, so every id that must be found again by a later
run, another process or another machine comes from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path


def _plain(value: object) -> object:
    """JSON-ready form of a value: dataclasses as their field dicts, tuples and sets as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(item) for item in value)
    return value


def stable_hash(*parts: object, length: int = 16) -> str:
    """A short hex id of ``parts`` (dataclasses, mappings, sequences, scalars) that is the
    same in every process: sha256 of their canonical JSON, first ``length`` digits."""
    text = json.dumps(_plain(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
