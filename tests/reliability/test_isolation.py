"""Tenant isolation as a property (hypothesis): no request is ever served an answer that was
stored under another credential, and a request without one never gets a keyed tenant's answer.

Each example draws a few API keys and a sequence of requests. A request names one of the keys
(or none) and spells it at random: ``Authorization`` with any scheme (Bearer in any case, Token,
Basic, none), any whitespace between scheme and key, ``x-api-key``, both headers
at once (with the same key or another one), or a blank header. Its body is one of a few questions,
exact or paraphrased, with or without a system prompt, a model of two, streaming or not, over
Chat Completions, Anthropic Messages or Responses.

The oracle needs nothing from the gateway: the fake upstream numbers its answers ("Answer #7 to:
..."), so every answer a client receives names the upstream call that produced it, and the test
remembers which key (the *owner*) each call was made for. A hit whose answer came from a call
made for another owner is a leak. When both headers are sent, the owner is the key in the
protocol's own header (``Authorization`` for the OpenAI APIs, ``x-api-key`` for Anthropic's):
the documented rule, the only one the gateway forwards.

The gateway is real (a TCP port, the fake upstream over HTTP), over each L1 backend (in-process
and a real redis-server), with L2 on: the real Qdrant Edge shard, and the ControlledEmbedder /
ControlledVerifier stand-ins of tests/gateway/test_cascade.py, set so that paraphrases of one
question land on one topic and the verifier accepts them. So exact repeats are L1 hits and
paraphrases L3 hits, and both are checked. The run must have produced both kinds of hits (the
property is not vacuous), and the last test shows it fails when tenants are merged.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reflex.settings import GatewaySettings
from services.gateway import request_head
from services.gateway.l2 import open_l2_store
from services.gateway.main import GatewayServer
from tests.gateway.test_cascade import DIM, ControlledEmbedder, ControlledVerifier
from tests.support.fake_upstream import FakeUpstream
from tests.support.loop_thread import LoopThread
from tests.support.redis_server import RedisServer

# Three questions, each with paraphrases (one topic each for the embedder stand-in).
TOPICS = {
    "css": ("How do I center a div in CSS?", "What's the CSS to center a div?", "center a div with css"),
    "git": ("How do I undo the last git commit?", "How can I revert my last commit in git?"),
    "sort": ("How do I sort a list in Python?", "Sorting a Python list: how?"),
}
QUESTIONS = [(topic, q) for topic, questions in TOPICS.items() for q in questions]
PROTOCOLS = ("chat", "messages", "responses")
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}
# the header each protocol's clients send: it names the tenant when both are sent
NATIVE = {"chat": "authorization", "messages": "x-api-key", "responses": "authorization"}
KEY_ALPHABET = string.ascii_letters + string.digits + "-_.:+/="
SCHEMES = ("Bearer", "bearer", "BEARER", "bEaReR", "Token", "Basic", "Key", "")
GAPS = (" ", "  ", "\t", " \t ")
# Whitespace around a header value is not sendable (h11 refuses it, and HTTP parsers strip it):
# only the whitespace inside the value varies.
PADS = ("",)
ANSWER_NUMBER = re.compile(r"Answer #(\d+) to:")


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Spelling:
    """How a request carries its credential."""

    kind: str  # "none" | "blank" | "authorization" | "x-api-key" | "both"
    scheme: str = "Bearer"
    gap: str = " "
    pad: str = ""
    other: int | None = None  # "both": the key index in the non-native header (None: the same key)


@dataclass(frozen=True)
class Request:
    key: int | None  # index into the example's keys; None: no credential
    spelling: Spelling
    protocol: str
    question: int  # index into QUESTIONS
    system: bool
    model: str
    stream: bool


def authorization(key: str, s: Spelling) -> str:
    return f"{s.pad}{s.scheme}{s.gap}{key}{s.pad}" if s.scheme else f"{s.pad}{key}{s.pad}"


def headers_and_owner(request: Request, keys: list[str]) -> tuple[dict[str, str], str | None]:
    """The request's headers and its owner: the key the test means it to be filed under."""
    s = request.spelling
    headers = {"X-Reflex-Format": "raw"}
    if request.protocol == "messages":
        headers["anthropic-version"] = "2023-06-01"
    if request.key is None or s.kind == "none":
        return headers, None
    if s.kind == "blank":
        headers["Authorization" if request.protocol != "messages" else "x-api-key"] = s.pad
        return headers, None
    key = keys[request.key]
    if s.kind == "authorization":
        headers["Authorization"] = authorization(key, s)
        return headers, key
    if s.kind == "x-api-key":
        headers["x-api-key"] = f"{s.pad}{key}{s.pad}"
        return headers, key
    other = keys[s.other] if s.other is not None else key
    native_key, foreign_key = key, other
    if NATIVE[request.protocol] == "authorization":
        headers["Authorization"] = authorization(native_key, s)
        headers["x-api-key"] = foreign_key
    else:
        headers["x-api-key"] = native_key
        headers["Authorization"] = authorization(foreign_key, s)
    return headers, native_key


def body_of(request: Request) -> dict[str, Any]:
    question = QUESTIONS[request.question][1]
    system = "You answer briefly." if request.system else None
    if request.protocol == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return {"model": request.model, "messages": messages, "stream": request.stream}
    if request.protocol == "messages":
        body: dict[str, Any] = {"model": request.model, "max_tokens": 64, "stream": request.stream,
                                "messages": [{"role": "user", "content": question}]}
        if system:
            body["system"] = system
        return body
    body = {"model": request.model, "input": question, "store": False, "stream": request.stream}
    if system:
        body["instructions"] = system
    return body


def answer_numbers(data: bytes) -> set[int]:
    """The upstream call numbers an answer names, whatever the protocol, streamed or not."""
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in ("content", "text", "delta") and isinstance(v, str):
                    texts.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    if data.lstrip().startswith(b"{"):
        walk(orjson.loads(data))
    else:
        for line in data.splitlines():
            if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                walk(orjson.loads(line[5:]))
    return {int(n) for n in ANSWER_NUMBER.findall("".join(texts))}


spellings = st.one_of(
    st.just(Spelling("none")),
    st.builds(Spelling, kind=st.just("blank"), pad=st.sampled_from(PADS)),
    st.builds(Spelling, kind=st.just("authorization"), scheme=st.sampled_from(SCHEMES), gap=st.sampled_from(GAPS),
              pad=st.sampled_from(PADS)),
    st.builds(Spelling, kind=st.just("x-api-key"), pad=st.sampled_from(PADS)),
    st.builds(Spelling, kind=st.just("both"), scheme=st.sampled_from(SCHEMES), gap=st.sampled_from(GAPS),
              other=st.one_of(st.none(), st.integers(0, 2))),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[Request]]:
    keys = draw(st.lists(st.text(KEY_ALPHABET, min_size=1, max_size=10), min_size=1, max_size=3, unique=True))
    n = len(keys)

    def spelling() -> Spelling:
        s = draw(spellings)
        if s.other is not None and s.other >= n:
            s = Spelling(s.kind, s.scheme, s.gap, s.pad, s.other % n)
        return s

    requests = []
    for _ in range(draw(st.integers(2, 8))):
        requests.append(Request(
            key=draw(st.one_of(st.none(), st.integers(0, n - 1))),
            spelling=spelling(),
            protocol=draw(st.sampled_from(PROTOCOLS)),
            question=draw(st.integers(0, len(QUESTIONS) - 1)),
            system=draw(st.booleans()),
            model=draw(st.sampled_from(("model-a", "model-b"))),
            stream=draw(st.booleans()),
        ))
    return keys, requests


# ---------------------------------------------------------------------------- the gateway


@dataclass
class Harness:
    server: GatewayServer
    thread: LoopThread
    fake: FakeUpstream
    owners: dict[int, str | None] = field(default_factory=dict)  # upstream call number -> owner
    served: Counter[str] = field(default_factory=Counter)  # X-Reflex-Status -> count

    def send(self, request: Request, keys: list[str]) -> None:
        headers, owner = headers_and_owner(request, keys)
        response = httpx.post(self.server.url + PATHS[request.protocol], json=body_of(request), headers=headers,
                              timeout=30)
        self.thread.run(self.server.flush())  # the cache write lands before the next request
        assert response.status_code == 200, response.text
        status = response.headers["x-reflex-status"]
        numbers = answer_numbers(response.content)
        assert len(numbers) == 1, (status, response.content[:300])
        number = numbers.pop()
        self.served[status] += 1
        if status.startswith("hit"):
            assert number in self.owners, f"a hit served call #{number}, which no request of this test made"
            assert self.owners[number] == owner, (
                f"{request} (owner {owner!r}) was served call #{number}, made for {self.owners[number]!r}")
        else:
            assert number not in self.owners, f"a {status} answer reused call #{number}"
            self.owners[number] = owner


@pytest.fixture(scope="module")
def thread() -> Iterator[LoopThread]:
    loop = LoopThread("isolation")
    yield loop
    loop.close()


def embedder_for_topics() -> ControlledEmbedder:
    embedder = ControlledEmbedder()
    embedder.topics = {question: topic for topic, question in QUESTIONS}
    return embedder


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest, thread: LoopThread, fake_upstream: FakeUpstream,
            tmp_path: Path) -> Iterator[Harness]:
    redis_url = None
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flushall()
        redis_url = redis.url
    fake_upstream.chunk_delay = 0.0
    settings_ = GatewaySettings.build(
        port=0, upstream_url=fake_upstream.url, anthropic_upstream_url=fake_upstream.base_url, mock_provider=False,
        semantic=True, redis_url=redis_url, storage_path=tmp_path, reranker_threshold=0.7,
        embedder_timeout_ms=2000, verifier_timeout_ms=2000,
    )
    verifier = ControlledVerifier()
    verifier.default = 0.99  # every candidate in the caller's own scope is accepted

    async def make() -> tuple[GatewayServer, Any]:
        l2 = await open_l2_store(settings_.l2, DIM)
        server = GatewayServer(settings_, embedder=embedder_for_topics(), verifier=verifier, l2=l2)
        await server.start()
        return server, l2

    server, l2 = thread.run(make())
    yield Harness(server, thread, fake_upstream)
    thread.run(server.stop())
    thread.run(l2.close())
    fake_upstream.chunk_delay = 0.005


def run_property(harness: Harness, max_examples: int, phases: tuple[Phase, ...] = tuple(Phase)) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None, phases=phases,
              suppress_health_check=list(HealthCheck))
    @given(scenarios())
    def property_(scenario: tuple[list[str], list[Request]]) -> None:
        keys, requests = scenario
        for request in requests:
            harness.send(request, keys)

    property_()


def test_no_request_is_served_another_credentials_entry(harness: Harness) -> None:
    run_property(harness, max_examples=50)
    # not vacuous: exact repeats came from L1 and paraphrases through L2 + the verifier
    assert harness.served["hit-l1-exact"] > 0 and harness.served["hit-l3-verified"] > 0, harness.served


def test_the_property_fails_when_tenants_are_merged(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # every credential filed under one tenant: the property must catch it
    monkeypatch.setattr(request_head, "tenant_id", lambda secret: "everyone")
    with pytest.raises(AssertionError, match="was served call"):
        run_property(harness, max_examples=60, phases=(Phase.generate,))


def test_explicit_spellings(harness: Harness) -> None:
    """The spellings the issue named, in one fixed sequence: Token/Basic/tab keys are tenants of
    their own, never the keyless one; Bearer in any case and x-api-key name the same tenant."""
    keys = ["sk-victim", "sk-other"]
    cases = [
        (0, Spelling("authorization", scheme="Token")),  # miss, filed under sk-victim (as "Token ...")
        (None, Spelling("none")),  # keyless: never that answer
        (0, Spelling("authorization", scheme="Basic")),
        (None, Spelling("blank")),
        (0, Spelling("authorization", scheme="Bearer", gap="\t")),
        (0, Spelling("authorization", scheme="bearer", gap="  ")),  # the same tenant as Bearer<TAB>: a hit
        (0, Spelling("x-api-key")),
        (1, Spelling("both", other=0)),  # Authorization names sk-other on chat: never sk-victim's answer
    ]
    for key, spelling in cases:
        harness.send(Request(key, spelling, "chat", 0, False, "model-a", False), keys)
    assert harness.served["hit-l1-exact"] >= 2  # the bearer spellings and x-api-key shared sk-victim's entry
