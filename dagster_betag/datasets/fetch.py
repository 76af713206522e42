"""Download a MovieLens release from GroupLens, verified, never leaving a half-extracted folder.

The zip is downloaded into a temporary folder beside the destination, checked (per-file
SHA-256 for releases we know, else the MD5 GroupLens publishes next to the zip),
extracted there and only then renamed into place. Every failure is a one-line
``DatasetError`` that says what to do, because the usual reader is someone whose
machine has no internet access and who needs to copy the folder in by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

from dagster_betag.datasets.contract import DatasetError

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"

# SHA-256 of every file in releases whose content is fixed; others are checked by MD5.
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "ml-latest-small": {  # the 2018 release
        "README.txt": "569448aba20b7eb111dbaa271231a51a9c25add372ededf84256dc592a1fceaf",
        "links.csv": "028a4a1d17751ca9276e0e0718cfc22356350f224a996e1ec348c23274b9209d",
        "movies.csv": "c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc",
        "ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
        "tags.csv": "68eec00a0820c2faa8863a6df7032f13d5899a4462bce9a97213905297ff3d34",
    },
}

_CHUNK = 1 << 20


def fetch_movielens(
    name: str = "ml-latest-small",
    dest_dir: str | Path = "data",
    url: str | None = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """Download and extract MovieLens ``name`` into ``dest_dir/name`` and return that folder.

    An existing ``dest_dir/name`` is returned untouched, so a copied-in folder (the
    offline route) is never overwritten. ``url`` overrides the GroupLens address, e.g.
    for a mirror; the checksums are verified all the same.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / name
    if target.is_dir():
        return target
    url = url or GROUPLENS_URL.format(name=name)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=dest_dir) as work:
            archive = Path(work) / f"{name}.zip"
            _download(url, archive, name, timeout, progress)
            if name not in KNOWN_SHA256:
                _verify_md5(archive, url, name, timeout)
            folder = _extract(archive, Path(work) / "extracted", name)
            _verify_files(folder, name)
            _move_into_place(folder, target)
    except OSError as exc:  # local filesystem trouble; network errors are already DatasetErrors
        raise DatasetError(f"could not write {name} under {dest_dir} ({exc.strerror or exc})") from exc
    return target


def _manual_route(name: str) -> str:
    return f"copy the {name} folder to data/{name} or set BETAG_DATASET_DIR to a folder that holds it"


def _open(url: str, name: str, timeout: float) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DatasetError(
            f"{url} answered HTTP {exc.code} {exc.reason}; check the name, or {_manual_route(name)}"
        ) from exc
    except ValueError as exc:  # not an http(s) URL at all
        raise DatasetError(f"{url!r} is not a valid download URL ({exc})") from exc
    except (urllib.error.URLError, OSError) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise DatasetError(f"could not reach {host} to download {name} ({reason}); {_manual_route(name)}") from exc


def _read_chunk(response: IO[bytes], url: str, name: str) -> bytes:
    try:
        return response.read(_CHUNK)
    except (OSError, http.client.HTTPException) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError(
            f"download of {url} was interrupted ({reason}); try again, or {_manual_route(name)}"
        ) from exc


def _download(url: str, archive: Path, name: str, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``archive`` with a byte-count progress report on stderr."""
    with _open(url, name, timeout) as response, archive.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = _Progress(f"{name}.zip", total, progress)
        received = 0
        while chunk := _read_chunk(response, url, name):
            out.write(chunk)
            received += len(chunk)
            bar.update(received)
        bar.close()
    if total is not None and received != total:
        raise DatasetError(f"download of {url} was cut short ({received} of {total} bytes); try again")


def _verify_md5(archive: Path, url: str, name: str, timeout: float) -> None:
    """Check the zip against the ``<url>.md5`` file GroupLens publishes beside it."""
    with _open(f"{url}.md5", name, timeout) as response:
        published = re.search(rb"\b[0-9a-fA-F]{32}\b", response.read(4096))
    if published is None:
        raise DatasetError(f"{url}.md5 holds no MD5 checksum; cannot verify {name}.zip, so {_manual_route(name)}")
    expected = published.group().decode().lower()
    with archive.open("rb") as handle:
        actual = hashlib.file_digest(handle, "md5").hexdigest()
    if actual != expected:
        raise DatasetError(
            f"checksum mismatch for {name}.zip: expected md5 {expected[:12]}…, got {actual[:12]}…; "
            "try the download again"
        )


def _extract(archive: Path, into: Path, name: str) -> Path:
    """Unzip (zipfile drops absolute and ".." member paths) and return the dataset folder inside."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(into)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"the downloaded {name}.zip is not a valid zip archive ({exc}); try again") from exc
    entries = [entry for entry in into.iterdir() if entry.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def _verify_files(folder: Path, name: str) -> None:
    for file_name, expected in KNOWN_SHA256.get(name, {}).items():
        path = folder / file_name
        if not path.is_file():
            raise DatasetError(f"{name}.zip lacks {file_name}; the download is incomplete or the release changed")
        with path.open("rb") as handle:
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
        if actual != expected:
            raise DatasetError(
                f"checksum mismatch for {name}/{file_name}: expected sha256 {expected[:12]}…, got {actual[:12]}…; "
                f"the download is corrupt or the release changed, so try again or {_manual_route(name)}"
            )


def _move_into_place(folder: Path, target: Path) -> None:
    """Rename the verified folder to ``target``; a concurrent fetch that got there first wins."""
    try:
        folder.rename(target)
    except OSError:
        if not target.is_dir():
            raise


class _Progress:
    """Downloaded bytes on stderr: a tqdm bar when tqdm is installed, else a plain counter line."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self._label, self._total, self._enabled, self._shown = label, total, enabled, 0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(self, received: int) -> None:
        if self._bar is not None:
            self._bar.update(received - self._shown)
        elif self._enabled:
            of_total = f" of {self._total / 1e6:.1f}" if self._total else ""
            print(f"\r{self._label}: {received / 1e6:.1f}{of_total} MB", end="", file=sys.stderr, flush=True)
        self._shown = received

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            print(file=sys.stderr)
