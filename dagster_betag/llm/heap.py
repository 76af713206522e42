"""Handing freed heap memory back to the operating system (library code, no Dagster, no torch).

A pipeline runs its stages in one process, and glibc keeps the blocks a stage frees in its heap
for reuse (a key/value cache or a batch of activations is thousands of them), so the resident
size of an in-process run would only grow from stage to stage. ``malloc_trim`` returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


def release_freed_memory() -> None:
    """Collect garbage, then hand the heap it frees back to the operating system.

    Measured: a BETag run of 4 shards settles at 1.1 GiB resident after each shard instead of
    climbing to 2.5; after the embedded model's conversion, 425 MB instead of 1,162. Only
    glibc has ``malloc_trim``; elsewhere this only collects garbage. The collection takes
    about 0.3 s in a process that has imported Dagster, so callers release after a stage, a
    shard or a conversion, not after every model load."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere; looked up once (``find_library`` runs ldconfig)."""
    library = ctypes.util.find_library("c")
    return None if library is None else getattr(ctypes.CDLL(library), "malloc_trim", None)
