"""Base tags from an OpenAI-compatible API, against real HTTP servers.

The fast tests run a stdlib HTTP server on 127.0.0.1 that answers in the OpenAI
chat-completions format from a script (canned answers, failing statuses, slow replies) and
records what it saw (bodies, headers, arrival times, requests in flight). The slow test
serves the embedded SmolLM2 GGUF with llama-cpp-python's server and tags four real films.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dagster_betag.llm.api import ApiConfig, ApiError, ApiTagger, retry_after_seconds
from dagster_betag.llm.base_tags import BaseTagConfig, catalog_attribute_values, tags_from_answer
from dagster_betag.llm.pipeline import base_tag_run
from dagster_betag.llm.prompts import DEFAULT_FEW_SHOT, ItemDescription, base_tag_messages
from dagster_betag.llm.tagger import BaseTagContext
from dagster_betag.llm.tags import parse_tags
from dagster_betag.shards import ShardedTable

MODEL = "fake-model"
CONFIG = BaseTagConfig(num_tags=4)
ITEMS = [
    ItemDescription("1", "Toy Story", None, {"year": ["1995"], "genre": ["Animation", "Comedy"]}),
    ItemDescription("2", "The Matrix", "A hacker learns the truth.", {"year": ["1999"], "genre": ["Action", "Sci-Fi"]}),
    ItemDescription("3", "Heist", None, {}),
]
# what a model might write: title echoes, duplicates, a genre the film does not have, a label
ANSWERS = {
    "Toy Story": "1. Toys come to life\n2. Friendship\n3. Toy Story\n4. Action\n5. friendship\n6. Pixar\n7. rivalry",
    "The Matrix": "Here are the tags:\n1. simulated reality\n2. comedy\n3. kung fu, 4. chosen one",
    "Heist": "",
}


# --- the fake server -----------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted reply: a status (200 sends the canned completion), extra headers, an error body, a delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay_s: float = 0.0


@dataclass
class FakeApi:
    """What the server answers (``script`` first, then ``answer``) and what it saw."""

    base_url: str = ""
    answer: Callable[[list[dict]], str] = lambda messages: ANSWERS[_title_asked(messages)]
    script: list[Reply] = field(default_factory=list)
    delay_s: float = 0.0
    bodies: list[dict] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
            self.authorizations.append(handler.headers.get("Authorization"))
            self.arrivals.append(time.perf_counter())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            reply = self.script.pop(0) if self.script else Reply(delay_s=self.delay_s)
        time.sleep(reply.delay_s)
        text = json.dumps(_completion(self.answer(body["messages"]))) if reply.status == 200 else reply.body
        with self.lock:  # before replying: the client cannot send its next request until it has the reply
            self.in_flight -= 1
        handler.send_response(reply.status)
        for name, value in {"Content-Type": "application/json", **reply.headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(text.encode())))
        handler.end_headers()
        handler.wfile.write(text.encode())


def _completion(content: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _title_asked(messages: list[dict]) -> str:
    return re.search(r"^Title: (.*)$", messages[-1]["content"], flags=re.MULTILINE).group(1)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that timed out has hung up; the server writing to it is expected here."""


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            api.handle(self)

        def log_message(self, format, *args) -> None:  # noqa: A002 - keep test output clean
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield api
    server.shutdown()
    server.server_close()


def _tagger(api: FakeApi, cache_dir: Path, **config) -> ApiTagger:
    return ApiTagger(ApiConfig(base_url=api.base_url, model=MODEL, backoff_s=0.001, **config), cache_dir)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- answers, requests and identity ------------------------------------------------------------


def test_answers_are_parsed_as_local_generation_parses_them(fake_api, tmp_path, monkeypatch):
    monkeypatch.setenv("BETAG_API_KEY", "sk-test")
    catalog = catalog_attribute_values(ITEMS)
    progress: list[int] = []
    tagger = _tagger(fake_api, tmp_path)

    tags = tagger.generate_base_tags(
        ITEMS, CONFIG, context=BaseTagContext(catalog_values=catalog), on_batch=progress.append
    )

    assert tags == [tags_from_answer(item, ANSWERS[item.title], CONFIG, catalog) for item in ITEMS]
    assert tags[0] == ["toys come to life", "friendship", "pixar", "rivalry"]  # no title, duplicate nor "action"
    assert tags[1:] == [["simulated reality", "kung fu", "chosen one"], []]
    without_catalog = tagger.generate_base_tags(ITEMS, CONFIG)
    parsed = [parse_tags(ANSWERS[item.title], echoes=[item.title])[: CONFIG.num_tags] for item in ITEMS]
    assert without_catalog == parsed
    assert progress == [1, 1, 1]

    by_title = {_title_asked(body["messages"]): body for body in fake_api.bodies[:3]}
    for item in ITEMS:
        body = by_title[item.title]
        assert body["messages"] == base_tag_messages(item, DEFAULT_FEW_SHOT, num_tags=CONFIG.num_tags)
        assert (body["model"], body["temperature"], body["max_tokens"]) == (MODEL, 0.0, CONFIG.max_new_tokens)
    assert set(fake_api.authorizations) == {"Bearer sk-test"}
    assert (tagger.name, tagger.precision, len(tagger.fingerprint)) == (MODEL, "api", 16)
    assert tagger.fingerprint != ApiTagger(ApiConfig(fake_api.base_url, "other-model"), tmp_path).fingerprint


def test_429_and_503_are_sent_again_after_a_back_off(fake_api, tmp_path):
    fake_api.script = [Reply(429, {"Retry-After": "0.2"}, '{"error": "slow down"}'), Reply(503, body="overloaded")]
    tagger = _tagger(fake_api, tmp_path)

    (tags,) = tagger.generate_base_tags(ITEMS[:1], CONFIG)

    assert tags == tags_from_answer(ITEMS[0], ANSWERS["Toy Story"], CONFIG)
    assert (tagger.stats.requests, tagger.stats.retries, tagger.stats.cache_hits) == (3, 2, 0)
    assert tagger.stats.backoff_s >= 0.2  # the server's Retry-After, then the tiny exponential back-off
    assert fake_api.arrivals[1] - fake_api.arrivals[0] >= 0.2


def test_a_timed_out_request_is_sent_again(fake_api, tmp_path):
    fake_api.script = [Reply(delay_s=1.0)]
    tagger = _tagger(fake_api, tmp_path, timeout_s=0.2)

    (tags,) = tagger.generate_base_tags(ITEMS[:1], CONFIG)

    assert tags == tags_from_answer(ITEMS[0], ANSWERS["Toy Story"], CONFIG)
    assert (tagger.stats.requests, tagger.stats.retries) == (2, 1)


def test_requests_in_flight_never_exceed_max_concurrency(fake_api, tmp_path):
    items = [ItemDescription(str(i), f"Film {i}", None, {}) for i in range(12)]
    fake_api.answer = lambda messages: "1. heist\n2. rain"
    fake_api.delay_s = 0.05
    tagger = _tagger(fake_api, tmp_path, max_concurrency=3)

    tags = tagger.generate_base_tags(items, CONFIG)

    assert tags == [["heist", "rain"]] * 12
    assert len(fake_api.bodies) == 12
    assert fake_api.max_in_flight == 3


def test_a_rerun_with_the_same_cache_asks_nothing(fake_api, tmp_path):
    first = _tagger(fake_api, tmp_path / "cache").generate_base_tags(ITEMS, CONFIG)
    assert len(fake_api.bodies) == 3

    rerun = _tagger(fake_api, tmp_path / "cache")
    assert rerun.generate_base_tags(ITEMS, CONFIG) == first
    assert len(fake_api.bodies) == 3
    assert (rerun.stats.requests, rerun.stats.cache_hits) == (0, 3)

    other_sampling = _tagger(fake_api, tmp_path / "cache", temperature=0.7)
    other_sampling.generate_base_tags(ITEMS, CONFIG)
    assert (other_sampling.stats.requests, other_sampling.stats.cache_hits) == (3, 0)


# --- failures ------------------------------------------------------------------------------------


def test_a_400_fails_at_once_with_one_line(fake_api, tmp_path):
    detail = json.dumps({"error": {"message": "bad request:\n" + "x" * 500}}, indent=2)
    fake_api.script = [Reply(400, body=detail)]
    tagger = _tagger(fake_api, tmp_path)

    with pytest.raises(ApiError) as raised:
        tagger.generate_base_tags(ITEMS[:1], CONFIG)

    message = str(raised.value)
    assert "\n" not in message
    assert "HTTP 400" in message and "bad request" in message
    assert message.endswith("x" * 20) and "x" * 201 not in message
    assert (len(fake_api.bodies), tagger.stats.retries) == (1, 0)


def test_an_unreachable_server_exhausts_the_retries(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    tagger = ApiTagger(ApiConfig(url, MODEL, max_retries=2, backoff_s=0.001), tmp_path)

    with pytest.raises(ApiError, match=r"chat/completions: no answer after 3 attempts \(last: .*refused"):
        tagger.generate_base_tags(ITEMS[:1], CONFIG)
    assert (tagger.stats.requests, tagger.stats.retries) == (3, 2)


def test_config_and_retry_after_are_checked():
    with pytest.raises(ValueError, match="http"):
        ApiConfig("127.0.0.1:8000/v1", MODEL)
    with pytest.raises(ValueError, match="model"):
        ApiConfig("http://127.0.0.1:8000/v1", "")
    with pytest.raises(ValueError):
        ApiConfig("http://127.0.0.1:8000/v1", MODEL, max_concurrency=0)
    assert ApiConfig("http://h/v1/", MODEL).endpoint == "http://h/v1/chat/completions"
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("nan") is None


# --- the pipeline and the resource ---------------------------------------------------------------


def test_base_tag_run_lands_shards_named_after_the_api_model(fake_api, tmp_path):
    tagger = _tagger(fake_api, tmp_path / "cache")
    run_key = {"model": tagger.name, "model_fingerprint": tagger.fingerprint, "precision": tagger.precision}
    table = ShardedTable(tmp_path / "base_tags", run_key)

    counts = base_tag_run(tagger, ITEMS, table, CONFIG, shard_size=2, log=lambda message: None)

    frame = table.read().sort("item_id")
    assert counts.n_generated == 3
    assert set(frame["model"]) == {MODEL} and set(frame["precision"]) == {"api"}
    catalog = catalog_attribute_values(ITEMS)
    assert frame["tags"].to_list() == [tags_from_answer(item, ANSWERS[item.title], CONFIG, catalog) for item in ITEMS]


def test_the_llm_resource_gives_an_api_tagger_when_a_url_is_set(tmp_path):
    from dagster_betag.defs.resources import LLMResource

    resource = LLMResource(api_base_url="http://127.0.0.1:8000/v1", api_model=MODEL, api_max_concurrency=2)
    tagger = resource.base_tagger(tmp_path)

    assert isinstance(tagger, ApiTagger)
    assert (tagger.name, tagger.config.max_concurrency, tagger.config.api_key_env) == (MODEL, 2, "BETAG_API_KEY")
    with pytest.raises(ValueError, match="model"):
        LLMResource(api_base_url="http://127.0.0.1:8000/v1").base_tagger(tmp_path)


# --- a real OpenAI-compatible server ------------------------------------------------------------

FILMS = [
    ItemDescription(
        "1", "Toy Story", None, {"year": ["1995"], "genre": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]}
    ),
    ItemDescription("2571", "The Matrix", None, {"year": ["1999"], "genre": ["Action", "Sci-Fi", "Thriller"]}),
    ItemDescription("296", "Pulp Fiction", None, {"year": ["1994"], "genre": ["Comedy", "Crime", "Drama", "Thriller"]}),
    ItemDescription("356", "Forrest Gump", None, {"year": ["1994"], "genre": ["Comedy", "Drama", "Romance", "War"]}),
]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="needs llama-cpp-python's server: pip install -e '.[api-server]'",
)
def test_llama_cpp_server_tags_real_films(tmp_path):
    from dagster_betag.llm.model import DEFAULT_CACHE_DIR, DEFAULT_MODEL, EMBEDDED_MODELS
    from dagster_betag.llm.weights import find_embedded_gguf

    gguf = find_embedded_gguf(EMBEDDED_MODELS[DEFAULT_MODEL], DEFAULT_CACHE_DIR)
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", DEFAULT_MODEL]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    log_path = tmp_path / "llama_server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(f"http://127.0.0.1:{port}/v1/models", server, log_path)
        tagger = ApiTagger(ApiConfig(f"http://127.0.0.1:{port}/v1", DEFAULT_MODEL, timeout_s=120), tmp_path / "cache")
        started = time.perf_counter()
        context = BaseTagContext(catalog_values=catalog_attribute_values(FILMS))
        tags = tagger.generate_base_tags(FILMS, BaseTagConfig(), context=context)
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"llama.cpp server: {len(FILMS)} films in {seconds:.1f} s ({seconds / len(FILMS):.2f} s per film)")
    for item, item_tags in zip(FILMS, tags, strict=True):
        print(f"  {item.title}: {', '.join(item_tags)}")
        assert len(item_tags) >= 3, (item.title, item_tags)
        assert item.title.lower().removeprefix("the ") not in item_tags
    assert tagger.stats.requests == len(FILMS)


def _wait_until_serving(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {server.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"llama_cpp.server did not answer {url} within {timeout_s:.0f} s: {log_path.read_text()[-2000:]}")
