"""Base tags from an OpenAI-compatible chat-completions API (vLLM, Ollama, llama.cpp server, hosted APIs).

Library code (no Dagster, stdlib HTTP)::

    tagger = ApiTagger(ApiConfig("http://127.0.0.1:8000/v1", "smollm2"), cache_dir=warehouse / "cache" / "api")
    tags = tagger.generate_base_tags(items, BaseTagConfig(), on_batch=progress.advance)
    tagger.stats  # requests sent, retries, cache hits, seconds backed off

The prompt is the local model's (``prompts.base_tag_messages``) and answers are read by the
same rules (``base_tags.tags_from_answer``), so tags from an API and from the local model
differ only by the model. What local decoding adds on top (bans on repeated or echoed
entries, stopping after ``num_tags`` valid ones) needs the logits, which this API does not
expose: the server's model writes its answer freely, up to ``max_tokens``.

Requests go out from a pool of ``max_concurrency`` threads. Connection errors, timeouts, 429
and 5xx are sent again, up to ``max_retries`` times, after an exponential jittered back-off or
the server's ``Retry-After``; any other failing status stops the run with a one-line
``ApiError``. Every answer is cached under ``cache_dir`` by a hash of the endpoint, model,
messages and sampling parameters (one small JSON file each, written atomically), so a rerun
or a resumed run never asks the same question twice.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from dagster_betag.files import replacing
from dagster_betag.knobs import DESCRIPTION, knob
from dagster_betag.llm.base_tags import BaseTagConfig, FewShot, tags_from_answer
from dagster_betag.llm.model import FINGERPRINT_CHARS
from dagster_betag.llm.prompts import ItemDescription, base_tag_messages
from dagster_betag.llm.tagger import BaseTagContext

DEFAULT_API_KEY_ENV = "BETAG_API_KEY"
DEFAULT_MAX_CONCURRENCY = 4
ERROR_BODY_CHARS = 200


class ApiError(RuntimeError):
    """The API refused a request or never answered; the message is one line a user can act on."""


@dataclass(frozen=True)
class ApiConfig:
    """Where the chat-completions endpoint is and how to talk to it."""

    base_url: str = field(
        metadata={
            DESCRIPTION: "The API root that OpenAI clients take (http://127.0.0.1:8000/v1); requests go to "
            "<base_url>/chat/completions."
        }
    )
    model: str = field(metadata={DESCRIPTION: "The model name the server serves; it names the tags' shards."})
    api_key_env: str = knob(
        DEFAULT_API_KEY_ENV,
        "The environment variable holding the key, sent as a bearer token when set; the key itself stays out of "
        "configs, cache keys and messages.",
    )
    max_concurrency: int = knob(DEFAULT_MAX_CONCURRENCY, "Requests in flight at once.")
    max_retries: int = knob(5, "How often a request is sent again after a connection error, a timeout, 429 or 5xx.")
    backoff_s: float = knob(
        1.0,
        "The wait before the first resend, doubled for each later one and jittered (x0.5-1.5) so that threads that "
        "failed together do not retry together; a Retry-After header replaces it.",
    )
    timeout_s: float = knob(60.0, "Seconds per request.")
    temperature: float = knob(
        0.0, "0 gives greedy answers, as local decoding does (and is what makes caching answers sound)."
    )
    max_tokens: int | None = knob(None, "Cap on each answer; null takes the BaseTagConfig's max_new_tokens.")

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must name the model the API serves")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("max_concurrency and timeout_s must be positive, max_retries and backoff_s not negative")

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class ApiStats:
    """What a tagger's work cost, for run metadata (``dataclasses.asdict`` gives plain numbers)."""

    requests: int = 0  # HTTP requests sent, resends included
    retries: int = 0  # resends after a connection error, a timeout, 429 or 5xx
    cache_hits: int = 0  # answers read from the cache instead of asked for
    backoff_s: float = 0.0  # seconds waited before resends


class AnswerCache:
    """Answers on disk, one JSON file per request key (``<folder>/<2 hex>/<key>.json``).

    Each file is written aside and renamed into place, so threads and concurrent runs never
    read half of one; an unreadable file counts as absent and is asked for again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def get(self, key: str) -> str | None:
        try:
            answer = json.loads(self._path(key).read_text(encoding="utf-8"))["answer"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return answer if isinstance(answer, str) else None

    def put(self, key: str, answer: str) -> None:
        with replacing(self._path(key)) as temporary:
            temporary.write_text(json.dumps({"answer": answer}, ensure_ascii=False), encoding="utf-8")

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"


class ApiTagger:
    """Base tags from a model behind an OpenAI-compatible API: a ``tagger.Tagger``, as the local
    ``LoadedLLM`` is, so ``pipeline.base_tag_run`` takes either.
    """

    # the server's weights and quantization are not visible through the API; the name says where tags came from
    precision = "api"

    def __init__(self, config: ApiConfig, cache_dir: Path) -> None:
        self.config = config
        self.name = config.model
        identity = f"{config.endpoint}\n{config.model}".encode()
        self.fingerprint = hashlib.sha256(identity).hexdigest()[:FINGERPRINT_CHARS]
        self.stats = ApiStats()
        self._cache = AnswerCache(cache_dir)
        self._stats_lock = threading.Lock()
        self._api_key = os.environ.get(config.api_key_env)

    def generate_base_tags(
        self,
        items: Sequence[ItemDescription],
        config: BaseTagConfig = BaseTagConfig(),
        *,
        context: BaseTagContext = BaseTagContext(),
        on_batch: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Each item's base tags, in the order of ``items``, as ``base_tags.generate_base_tags`` gives them.

        ``on_batch(1)`` is called in the calling thread as each answer arrives (or is read
        from the cache). The first request that fails for good cancels the ones not yet sent
        and raises ``ApiError``; answers already received stay cached.
        """
        bodies = [self._request_body(item, context.few_shot, config) for item in items]
        answers = [""] * len(items)
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency, thread_name_prefix="betag-api")
        try:
            futures = {pool.submit(self._answer, body): index for index, body in enumerate(bodies)}
            for future in as_completed(futures):
                answers[futures[future]] = future.result()
                if on_batch is not None:
                    on_batch(1)
        finally:
            pool.shutdown(cancel_futures=True)
        return [
            tags_from_answer(item, text, config, context.catalog_values)
            for item, text in zip(items, answers, strict=True)
        ]

    def _request_body(self, item: ItemDescription, few_shot: FewShot, config: BaseTagConfig) -> dict:
        """The local model's prompt for ``item``, for the API's model with this tagger's sampling parameters."""
        return {
            "model": self.config.model,
            "messages": base_tag_messages(item, few_shot, num_tags=config.num_tags, item_noun=config.item_noun),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens if self.config.max_tokens is not None else config.max_new_tokens,
        }

    def _answer(self, body: dict) -> str:
        key = request_key(self.config.endpoint, body)
        cached = self._cache.get(key)
        if cached is not None:
            self._count(cache_hits=1)
            return cached
        answer = self._post_with_retries(json.dumps(body).encode())
        self._cache.put(key, answer)
        return answer

    def _post_with_retries(self, data: bytes) -> str:
        resends = 0
        while True:
            self._count(requests=1)
            try:
                return self._post(data)
            except _TransientFailure as failure:
                if resends == self.config.max_retries:
                    raise ApiError(
                        f"{self.config.endpoint}: no answer after {resends + 1} attempts (last: {failure})"
                    ) from None
                delay = failure.retry_after_s if failure.retry_after_s is not None else self._backoff(resends)
                resends += 1
                self._count(retries=1, backoff_s=delay)
                time.sleep(delay)

    def _post(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.config.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, _error_body(error)
            if status == 429 or status >= 500:
                raise _TransientFailure(f"HTTP {status}: {body}", retry_after_seconds(error.headers.get("Retry-After")))
            raise ApiError(f"{self.config.endpoint} answered HTTP {status}: {body}") from None
        except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, cut short
            raise _TransientFailure(_one_line(getattr(error, "reason", error))) from None
        return self._completion_text(payload)

    def _completion_text(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ApiError(f"{self.config.endpoint} sent no chat completion: {_one_line(payload)}") from None
        return content if isinstance(content, str) else ""  # no text (a refusal, a tool call): no tags

    def _backoff(self, resends: int) -> float:
        return self.config.backoff_s * 2**resends * random.uniform(0.5, 1.5)

    def _count(self, **increments: float) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)


class _TransientFailure(Exception):
    """A failure worth sending the request again for, with the server's requested wait if it gave one."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


def request_key(endpoint: str, body: dict) -> str:
    """The cache key of a request: what the answer depends on (not the API key)."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        return _one_line(error.read())
    except OSError:
        return ""


def _one_line(text: object) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return " ".join(str(text).split())[:ERROR_BODY_CHARS]
