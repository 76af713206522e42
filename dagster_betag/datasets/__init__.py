"""Datasets: read a source folder into the landing contract and write it as Parquet.

Library code with no Dagster dependency, so the CLI, tests and Dagster assets share it::

    dataset = read_dataset("data/ml-latest-small")  # format detected from the files present
    write_landing(dataset, "warehouse/landing")     # four Parquet files + manifest.json

``read_dataset`` picks an adapter (``movielens`` or ``generic``), which reads files
through ``reader`` as raw text; dbt staging does typing and quarantine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from dagster_betag.datasets.contract import LANDING_SCHEMAS, DatasetError, LandedDataset, conform, empty_table
from dagster_betag.datasets.fetch import fetch_movielens
from dagster_betag.datasets.generic import read_generic
from dagster_betag.datasets.movielens import read_movielens_1m, read_movielens_100k, read_movielens_latest
from dagster_betag.files import disk_full_named, fsync_path, make_folders, replacing, temp_path_beside
from dagster_betag.hashing import file_sha256

__all__ = [
    "AUTO_FORMAT",
    "FORMAT_CHOICES",
    "FORMATS",
    "LANDING_SCHEMAS",
    "MANIFEST_NAME",
    "DatasetError",
    "LandedDataset",
    "conform",
    "detect_format",
    "empty_table",
    "fetch_movielens",
    "read_dataset",
    "read_manifest",
    "source_hashes",
    "write_landing",
]

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class _Layout:
    read: Callable[[Path], dict[str, pl.DataFrame]]
    # the layout is recognised when, for every marker, one of its alternative files exists
    markers: tuple[tuple[str, ...], ...]
    # every file the adapter may read; their hashes go into the manifest
    files: tuple[str, ...]


_LAYOUTS: dict[str, _Layout] = {
    "movielens-latest": _Layout(
        read_movielens_latest, (("movies.csv",), ("ratings.csv",)), ("movies.csv", "ratings.csv", "tags.csv")
    ),
    "movielens-1m": _Layout(read_movielens_1m, (("movies.dat",), ("ratings.dat",)), ("movies.dat", "ratings.dat")),
    "movielens-100k": _Layout(read_movielens_100k, (("u.item",), ("u.data",)), ("u.item", "u.data", "u.genre")),
    "generic": _Layout(
        read_generic,
        (("items.csv", "items.parquet"), ("events.csv", "events.parquet")),
        ("items.csv", "items.parquet", "events.csv", "events.parquet"),
    ),
}
FORMATS: tuple[str, ...] = tuple(_LAYOUTS)
AUTO_FORMAT = "auto"  # detect the layout from the files present
FORMAT_CHOICES: tuple[str, ...] = (AUTO_FORMAT, *FORMATS)


def detect_format(path: str | Path) -> str:
    """The layout of the dataset folder ``path``, one of ``FORMATS``, judged by the files present."""
    source_dir = _existing_dir(path)
    present = {entry.name for entry in source_dir.iterdir() if entry.is_file()}
    absent = {name: [alts for alts in layout.markers if present.isdisjoint(alts)] for name, layout in _LAYOUTS.items()}
    if complete := [name for name, missing in absent.items() if not missing]:
        return complete[0]
    for name, missing in absent.items():
        if len(missing) < len(_LAYOUTS[name].markers):  # some marker files, not all: say what is missing
            lacking = " and ".join(" or ".join(alts) for alts in missing)
            raise DatasetError(f"{source_dir} looks like a {name} dataset but lacks {lacking}")
    expected = "; ".join(
        f"{' + '.join(' or '.join(alts) for alts in layout.markers)} ({name})" for name, layout in _LAYOUTS.items()
    )
    raise DatasetError(f"cannot tell the format of {source_dir}: expected {expected}")


def read_dataset(path: str | Path, format: str = AUTO_FORMAT) -> LandedDataset:
    """Read the dataset folder ``path`` into the landing contract (``format`` "auto" detects it)."""
    source_dir = _existing_dir(path)
    layout_name = detect_format(source_dir) if format == AUTO_FORMAT else _known_format(format)
    hashes = _hash_files(source_dir, _LAYOUTS[layout_name].files)  # before reading; see LandedDataset
    tables = _LAYOUTS[layout_name].read(source_dir)
    return LandedDataset(
        name=source_dir.name, format=layout_name, source_dir=source_dir, source_hashes=hashes, **tables
    )


def source_hashes(path: str | Path, format: str = AUTO_FORMAT) -> dict[str, str]:
    """SHA-256 of each file the adapter reads; compare with a manifest's ``source_files`` to spot new inputs."""
    source_dir = _existing_dir(path)
    layout_name = detect_format(source_dir) if format == AUTO_FORMAT else _known_format(format)
    return _hash_files(source_dir, _LAYOUTS[layout_name].files)


def write_landing(dataset: LandedDataset, landing_dir: str | Path) -> dict[str, int]:
    """Write ``<landing_dir>/<table>.parquet`` for the four tables, all or nothing, then manifest.json.

    Every table is first written to a temporary file beside its target, fsynced, and only
    then renamed over it (the folder fsynced after), so a failure (disk full, a bad frame,
    a power cut) leaves the previous landing intact and never half-written; a full disk is
    a one-line ``DiskFullError``. The manifest comes last: while it still describes the old
    inputs, a refresh sensor will simply try again.
    """
    landing_dir = Path(landing_dir)
    make_folders(landing_dir)
    tables = {name: conform(name, frame) for name, frame in dataset.tables().items()}
    staged: dict[Path, Path] = {}
    try:
        for name, frame in tables.items():
            target = landing_dir / f"{name}.parquet"
            staged[target] = temp_path_beside(target)
            with disk_full_named(target):
                frame.write_parquet(staged[target])
                fsync_path(staged[target])
        _replace_all(staged)
        fsync_path(landing_dir)
    finally:
        for temp in staged.values():
            temp.unlink(missing_ok=True)
    counts = {name: frame.height for name, frame in tables.items()}
    with replacing(landing_dir / MANIFEST_NAME) as temporary:
        temporary.write_bytes(_manifest(dataset, counts))
    return counts


def read_manifest(landing_dir: str | Path) -> dict | None:
    """The manifest of the last successful ``write_landing`` into ``landing_dir``, or None if there is none."""
    path = Path(landing_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); delete it and land the dataset again") from exc


def _existing_dir(path: str | Path) -> Path:
    source_dir = Path(path).expanduser().resolve()
    if not source_dir.is_dir():
        what = "is not a folder" if source_dir.exists() else "does not exist"
        raise DatasetError(
            f"dataset folder {source_dir} {what}; download or copy the dataset there, or set BETAG_DATASET_DIR"
        )
    return source_dir


def _known_format(format: str) -> str:
    if format not in _LAYOUTS:
        raise DatasetError(f"unknown dataset format {format!r}; use one of: {', '.join(FORMAT_CHOICES)}")
    return format


def _hash_files(source_dir: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {name: file_sha256(source_dir / name) for name in names if (source_dir / name).is_file()}


def _manifest(dataset: LandedDataset, counts: dict[str, int]) -> bytes:
    manifest = {
        "dataset": dataset.name,
        "format": dataset.format,
        "source_dir": str(dataset.source_dir),
        "row_counts": counts,
        "source_files": dataset.source_hashes,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


def _replace_all(staged: dict[Path, Path]) -> None:
    """Rename every staged file over its target; if any rename fails, put all old targets back."""
    backups: dict[Path, Path | None] = {}
    try:
        for target, temp in staged.items():
            backups[target] = _backup(target)
            os.replace(temp, target)
    except BaseException:
        for target, backup in backups.items():
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        raise
    finally:
        for backup in backups.values():
            if backup is not None:
                backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A second name for the current ``target`` (a hard link, or a copy where links are unsupported)."""
    if not target.exists():
        return None
    backup = temp_path_beside(target)
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup
