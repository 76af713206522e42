"""fetch_movielens against a local http.server: never touches the internet."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_betag.datasets import DatasetError, fetch, fetch_movielens

SHARED_ML_LATEST_SMALL = Path(__file__).parents[2] / "shared/data/ml-latest-small"
needs_shared = pytest.mark.skipif(not SHARED_ML_LATEST_SMALL.is_dir(), reason="shared ml-latest-small not present")

TINY_FILES = {
    "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n",
    "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,1\n",
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_zip(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    """A GroupLens-style zip: every file inside one top-level ``folder``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        for name, data in files.items():
            bundle.writestr(f"{folder}/{name}", data)
    return path


def shared_files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in SHARED_ML_LATEST_SMALL.iterdir() if path.is_file()}


def fetch_error(**kwargs: object) -> str:
    with pytest.raises(DatasetError) as raised:
        fetch_movielens(progress=False, **kwargs)
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir()) if dest.exists() else []


@needs_shared
def test_fetch_known_release_verifies_every_file(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    make_zip(root / "ml-latest-small.zip", "ml-latest-small", shared_files())
    dest = tmp_path / "data"
    folder = fetch_movielens("ml-latest-small", dest, url=f"{base}/ml-latest-small.zip", progress=False)
    assert folder == dest / "ml-latest-small"
    for name, expected in fetch.KNOWN_SHA256["ml-latest-small"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == expected
    assert leftovers(dest) == ["ml-latest-small"]  # the temporary download folder is gone


@needs_shared
def test_tampered_file_is_named_and_nothing_is_left_behind(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    files = shared_files()
    files["ratings.csv"] = files["ratings.csv"].replace(b"4.0", b"5.0", 1)
    make_zip(root / "ml-latest-small.zip", "ml-latest-small", files)
    dest = tmp_path / "data"
    message = fetch_error(name="ml-latest-small", dest_dir=dest, url=f"{base}/ml-latest-small.zip")
    assert message.startswith("checksum mismatch for ml-latest-small/ratings.csv: expected sha256 80da8b3393da")
    assert leftovers(dest) == []


def test_missing_file_in_known_release(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, base = served
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in TINY_FILES.items()}
    monkeypatch.setitem(fetch.KNOWN_SHA256, "ml-tiny", {**hashes, "tags.csv": "0" * 64})
    make_zip(root / "ml-tiny.zip", "ml-tiny", TINY_FILES)
    assert "ml-tiny.zip lacks tags.csv" in fetch_error(
        name="ml-tiny", dest_dir=tmp_path / "data", url=f"{base}/ml-tiny.zip"
    )


def test_other_releases_are_checked_against_the_published_md5(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    archive = make_zip(root / "ml-tiny.zip", "ml-tiny", TINY_FILES)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    (root / "ml-tiny.zip.md5").write_text(f"MD5 (ml-tiny.zip) = {md5}\n")
    folder = fetch_movielens("ml-tiny", tmp_path / "data", url=f"{base}/ml-tiny.zip", progress=False)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == TINY_FILES


def test_md5_mismatch(served: tuple[Path, str], tmp_path: Path) -> None:
    root, base = served
    make_zip(root / "ml-tiny.zip", "ml-tiny", TINY_FILES)
    (root / "ml-tiny.zip.md5").write_text(f"{'0' * 32}  ml-tiny.zip\n")
    message = fetch_error(name="ml-tiny", dest_dir=tmp_path / "data", url=f"{base}/ml-tiny.zip")
    assert message.startswith("checksum mismatch for ml-tiny.zip: expected md5 000000000000")
    assert leftovers(tmp_path / "data") == []


def test_not_a_zip(served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = served
    monkeypatch.setitem(fetch.KNOWN_SHA256, "ml-tiny", {})
    (root / "ml-tiny.zip").write_bytes(b"<html>maintenance</html>")
    assert "not a valid zip archive" in fetch_error(
        name="ml-tiny", dest_dir=tmp_path / "data", url=f"{base}/ml-tiny.zip"
    )


def test_http_error(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    message = fetch_error(name="ml-nope", dest_dir=tmp_path / "data", url=f"{base}/ml-nope.zip")
    assert message.startswith(f"{base}/ml-nope.zip answered HTTP 404")


def test_unreachable_host_says_how_to_work_offline(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = fetch_error(name="ml-latest-small", dest_dir=tmp_path / "data", url=f"http://127.0.0.1:{port}/x.zip")
    assert message.startswith(f"could not reach 127.0.0.1:{port} to download ml-latest-small")
    assert "data/ml-latest-small" in message and "BETAG_DATASET_DIR" in message
    assert leftovers(tmp_path / "data") == []


def test_existing_folder_is_returned_without_downloading(tmp_path: Path) -> None:
    existing = tmp_path / "data" / "ml-latest-small"
    existing.mkdir(parents=True)
    assert (
        fetch_movielens("ml-latest-small", tmp_path / "data", url="http://127.0.0.1:9/never", progress=False)
        == existing
    )
