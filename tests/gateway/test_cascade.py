"""The verified cascade (L1 -> L2 -> L3) through the HTTP app.

This is a unit layer for the cascade's decisions: the L2 store is the real embedded Qdrant
Edge shard (in tmp_path), but the embedder and verifier are small in-test implementations
of the ``Embedder``/``Verifier`` protocols, because these tests must choose the similarity
and the verifier's scores exactly and make the services fail or stall on demand. The
end-to-end paraphrase test through the real gRPC model services lives with the
integration tests; it reuses ``start_gateway(embedder=..., verifier=..., l2=...)``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from blake3 import blake3

from reflex.settings import GatewaySettings
from services.gateway.app import create_app
from services.gateway.cascade import ComponentHealth
from reflex.entry import CachedEntry
from services.gateway.keys import RequestKeys, tenant_id
from services.gateway.l2 import open_l2_store
from services.gateway.protocols.openai_chat import ChatCompletions
from services.gateway.state import STATE
from reflex.tiers import L2Point, L2Scope, L2Store, TierUnavailable
from tests.gateway.conftest import RAW, gateway_settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.loop_thread import LoopThread

THRESHOLD = 0.70

DIM = 32
TEST_KEY = web.AppKey("test_api_key", str)
CHAT = "/v1/chat/completions"
QUESTION = "How do I center a div in CSS?"
PARAPHRASE = "What's the CSS to center a div horizontally and vertically?"
UNRELATED = "How do I bake sourdough bread?"


def unit(vector: np.ndarray) -> list[float]:
    return (vector / np.linalg.norm(vector)).astype(float).tolist()


def topic_vector(topic: str, jitter_seed: str) -> list[float]:
    """Texts of one topic land close together (cosine ~0.99), other topics far away."""
    base = np.random.default_rng(int.from_bytes(blake3(topic.encode()).digest()[:8], "big")).normal(size=DIM)
    jitter = np.random.default_rng(int.from_bytes(blake3(jitter_seed.encode()).digest()[:8], "big")).normal(size=DIM)
    return unit(base + 0.1 * jitter)


class ControlledEmbedder:
    """Embedder protocol: paraphrases of one topic get nearby vectors; can fail or stall."""

    def __init__(self) -> None:
        self.topics = {QUESTION: "css", PARAPHRASE: "css", UNRELATED: "bread"}
        self.calls: list[list[str]] = []
        self.down = False
        self.stall = 0.0
        self.gate: asyncio.Event | None = None  # when set, every embedding waits for it to open

    async def embed(self, texts: Sequence[str], *, timeout: float) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.down:
            raise TierUnavailable("embedder", "unavailable", "test says down")
        if self.stall:
            await asyncio.sleep(self.stall)  # ignores its timeout on purpose
        if self.gate is not None:
            await self.gate.wait()
        return [topic_vector(self.topics.get(t, t), t) for t in texts]

    async def check(self) -> None:
        if self.down:
            raise TierUnavailable("embedder", "unavailable", "test says down")

    async def close(self) -> None:
        return None


class ControlledVerifier:
    """Verifier protocol: returns the scores the test sets, per (query, candidate)."""

    def __init__(self) -> None:
        self.scores: dict[tuple[str, str], float] = {}
        self.default = 0.0
        self.calls: list[tuple[str, list[str]]] = []
        self.cosines: list[list[float] | None] = []  # what each call sent, in order
        self.down = False
        self.stall = 0.0
        self.truncate = False

    async def score(self, query: str, candidates: Sequence[str], cosines: Sequence[float] | None = None, *,
                    timeout: float, min_score: float = 0.0) -> list[float]:
        self.calls.append((query, list(candidates)))
        self.cosines.append(None if cosines is None else list(cosines))
        if self.down:
            raise TierUnavailable("verifier", "unavailable", "test says down")
        if self.stall:
            await asyncio.sleep(self.stall)
        scores = [self.scores.get((query, c), self.default) for c in candidates]
        return scores[:-1] if self.truncate else scores

    async def check(self) -> None:
        if self.down:
            raise TierUnavailable("verifier", "unavailable", "test says down")

    async def close(self) -> None:
        return None


class ThreadBoundL2:
    """Forwards every call to a store living on its own loop thread.

    Opening an Edge shard costs about a second, so the module shares one; each test gets an
    event loop of its own, and the store must keep running on the loop it was opened on.
    Tests stay independent because each uses a tenant of its own (see ``make_client``).
    """

    def __init__(self, store: L2Store, thread: LoopThread) -> None:
        self._store, self._thread = store, thread

    async def _on_thread(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._thread.loop))

    async def search(self, scope: L2Scope, vector: Sequence[float], *, top_k: int, min_similarity: float) -> Any:
        return await self._on_thread(self._store.search(scope, vector, top_k=top_k, min_similarity=min_similarity))

    async def has_entries(self, scope: L2Scope) -> bool:
        return await self._on_thread(self._store.has_entries(scope))  # type: ignore[no-any-return]

    async def upsert(self, point: L2Point) -> None:
        await self._on_thread(self._store.upsert(point))

    async def check(self) -> None:
        await self._on_thread(self._store.check())

    async def close(self) -> None:
        return None  # the module fixture closes the real store


@pytest.fixture(scope="module")
def shared_l2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadBoundL2]:
    thread = LoopThread("l2-store")
    settings = GatewaySettings.build(storage_path=tmp_path_factory.mktemp("l2"), semantic=True)
    store = thread.run(open_l2_store(settings.l2, DIM))
    yield ThreadBoundL2(store, thread)
    thread.run(store.close())
    thread.close()


@pytest.fixture
def l2(shared_l2: ThreadBoundL2) -> ThreadBoundL2:
    return shared_l2


@pytest.fixture
def embedder() -> ControlledEmbedder:
    return ControlledEmbedder()


@pytest.fixture
def verifier() -> ControlledVerifier:
    return ControlledVerifier()


@pytest.fixture
def make_client(
    aiohttp_client: Any, fake_upstream: FakeUpstream, embedder: ControlledEmbedder, verifier: ControlledVerifier, l2: L2Store
) -> Callable[..., Any]:
    async def make(**overrides: Any) -> TestClient:
        # The threshold is pinned: these tests are about the cascade's logic at a known
        # threshold, not about the shipped default (which the verifier's curve picks).
        values = {"semantic": True, "embedder_timeout_ms": 300, "verifier_timeout_ms": 300,
                  "reranker_threshold": THRESHOLD, **overrides}
        settings = gateway_settings(fake_upstream, **values)
        app = create_app(settings, embedder=embedder, verifier=verifier, l2=l2)
        app[TEST_KEY] = f"sk-{uuid.uuid4().hex}"  # a tenant of this test's own in the shared L2
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


async def chat(
    client: TestClient,
    question: str | None = None,
    *,
    key: str | None = None,
    model: str = "fake-model",
    messages: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "messages": messages or [{"role": "user", "content": question}], **extra}
    key = key or client.app[TEST_KEY]
    response = await client.post(CHAT, json=body, headers={"Authorization": f"Bearer {key}", **RAW, **(headers or {})})
    data = await response.read()
    await client.app[STATE].settle()  # the background write is done before the next request
    parsed = orjson.loads(data) if not extra.get("stream") else data.decode()
    return response.status, dict(response.headers), parsed


async def test_paraphrase_is_served_after_verification(
    client: TestClient, fake_upstream: FakeUpstream, embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    verifier.scores[(PARAPHRASE, QUESTION)] = 0.93
    _, headers, first = await chat(client, QUESTION, model="fake-model")
    assert headers["X-Reflex-Status"] == "miss"
    assert embedder.calls == [[QUESTION]]  # one embedding for lookup AND write: never twice

    _, headers, hit = await chat(client, PARAPHRASE, model="fake-model")
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert float(headers["X-Reflex-Verifier-Score"]) == pytest.approx(0.93)
    assert 0.5 <= float(headers["X-Reflex-Similarity"]) <= 1.0
    assert hit["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert hit["id"] != first["id"] and hit["model"] == "fake-model"
    assert verifier.calls == [(PARAPHRASE, [QUESTION])]  # one Score call over the candidates
    assert fake_upstream.chat_count == 1

    # the exact repeat of the paraphrase was promoted to L1: no model call at all
    embeds_before = len(embedder.calls)
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "hit-l1-exact"
    assert len(embedder.calls) == embeds_before
    promoted = CachedEntry.from_bytes(await client.app[STATE].cascade.l1.get(RequestKeys.of(tenant_id(client.app[TEST_KEY]), ChatCompletions().parse(orjson.dumps({
        "model": "fake-model", "messages": [{"role": "user", "content": PARAPHRASE}]}))).l1_key))
    assert promoted.question == QUESTION  # still says what the answer was matched to


async def test_l3_hit_streams_with_the_requests_model_and_one_fresh_id(
    client: TestClient, verifier: ControlledVerifier
) -> None:
    verifier.default = 0.9
    await chat(client, QUESTION)
    _, headers, text = await chat(client, PARAPHRASE, stream=True, stream_options={"include_usage": True})
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {"fake-model"}
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == f"Answer #1 to: {QUESTION}"
    assert chunks[-1]["usage"]["prompt_tokens"] == 11


@pytest.mark.parametrize(
    ("score", "status"),
    [(THRESHOLD, "hit-l3-verified"), (THRESHOLD - 1e-4, "miss"), (1.0, "hit-l3-verified"), (0.0, "miss")],
    ids=["at-threshold", "just-below", "certain", "zero"],
)
async def test_threshold_boundary(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier, score: float, status: str
) -> None:
    verifier.scores[(PARAPHRASE, QUESTION)] = score
    await chat(client, QUESTION)
    _, headers, body = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == status
    if status == "miss":
        assert body["choices"][0]["message"]["content"] == f"Answer #2 to: {PARAPHRASE}"
        assert "X-Reflex-Verifier-Score" not in headers


OTHER = "Center a div with CSS grid?"  # a second stored question on PARAPHRASE's topic


async def _store_two_near_entries(client: TestClient, embedder: ControlledEmbedder) -> None:
    """QUESTION and OTHER stored, both near PARAPHRASE."""
    embedder.topics[OTHER] = "css"
    await chat(client, QUESTION)
    await chat(client, OTHER)


def _cosine(u: Sequence[float], v: Sequence[float]) -> float:
    a, b = np.asarray(u), np.asarray(v)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_best_verified_candidate_wins_not_the_nearest(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    # With REFLEX_RERANKER_CANDIDATES above 1 the verifier picks among the near entries.
    client = await make_client(l2_min_similarity=-1.0, reranker_candidates=5)  # every stored question through L2
    await _store_two_near_entries(client, embedder)
    verifier.scores[(PARAPHRASE, QUESTION)] = 0.2
    verifier.scores[(PARAPHRASE, OTHER)] = 0.8
    _, headers, body = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert body["choices"][0]["message"]["content"] == f"Answer #2 to: {OTHER}"
    assert sorted(verifier.calls[-1][1]) == sorted([QUESTION, OTHER])


async def test_by_default_only_the_nearest_candidate_is_verified(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    # The default (REFLEX_RERANKER_CANDIDATES=1) verifies cosine's own first choice and never
    # re-ranks: a farther entry the verifier would like better is not even scored, and when the
    # nearest one fails, the lookup is a miss.
    client = await make_client(l2_min_similarity=-1.0)
    await _store_two_near_entries(client, embedder)
    vectors = {q: (await embedder.embed([q], timeout=1))[0] for q in (PARAPHRASE, QUESTION, OTHER)}
    nearest, farther = sorted((QUESTION, OTHER), key=lambda q: -_cosine(vectors[PARAPHRASE], vectors[q]))
    verifier.scores[(PARAPHRASE, nearest)] = 0.2
    verifier.scores[(PARAPHRASE, farther)] = 0.99
    _, headers, body = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "miss"
    (query, candidates), cosines = verifier.calls[-1], verifier.cosines[-1]
    assert query == PARAPHRASE and candidates == [nearest] and cosines is not None and len(cosines) == 1
    assert body["choices"][0]["message"]["content"] == f"Answer #3 to: {PARAPHRASE}"


async def test_the_verifier_gets_each_candidates_l2_cosine(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    # The decision model behind Score reads the cosine L2 found each candidate by.
    client = await make_client(l2_min_similarity=-1.0, reranker_candidates=5)
    await _store_two_near_entries(client, embedder)
    await chat(client, PARAPHRASE)
    (query, candidates), cosines = verifier.calls[-1], verifier.cosines[-1]
    assert query == PARAPHRASE and cosines is not None and len(cosines) == len(candidates) == 2
    vectors = {q: (await embedder.embed([q], timeout=1))[0] for q in (PARAPHRASE, *candidates)}
    for candidate, cos in zip(candidates, cosines, strict=True):
        assert cos == pytest.approx(_cosine(vectors[PARAPHRASE], vectors[candidate]), abs=1e-4)
    assert cosines == sorted(cosines, reverse=True)  # L2's order, most similar first


@pytest.mark.parametrize(("margin", "status"), [(0.0, "hit-l3-verified"), (0.1, "miss")])
async def test_a_runner_up_within_the_margin_refuses_the_hit(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier, margin: float,
    status: str,
) -> None:
    # Two stored questions both pass, 0.05 apart: with REFLEX_RERANKER_MARGIN 0.1 the query
    # sits between two entries, and the cascade refuses rather than guess (reflex/decision_rule.py).
    client = await make_client(l2_min_similarity=-1.0, reranker_margin=margin, reranker_candidates=5)
    await _store_two_near_entries(client, embedder)
    verifier.scores[(PARAPHRASE, QUESTION)] = 0.90
    verifier.scores[(PARAPHRASE, OTHER)] = 0.85
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == status


@pytest.mark.parametrize("failure", ["down", "stall", "truncated"])
async def test_verifier_failure_is_a_plain_miss_never_unverified(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier, failure: str
) -> None:
    verifier.default = 1.0  # it WOULD say yes
    await chat(client, QUESTION)
    if failure == "down":
        verifier.down = True
    elif failure == "stall":
        verifier.stall = 2.0  # past verifier_timeout_ms=300; the cascade's own deadline cuts it
    else:
        verifier.truncate = True  # fewer scores than candidates: not a yes for anyone
    status, headers, body = await chat(client, PARAPHRASE)
    assert status == 200
    assert headers["X-Reflex-Status"] == "miss"
    assert body["choices"][0]["message"]["content"] == f"Answer #2 to: {PARAPHRASE}"
    metrics = await (await client.get("/metrics")).text()
    assert 'reflex_gateway_tier_failures_total{component="verifier"' in metrics


async def test_a_lookup_in_an_empty_scope_does_not_wait_for_its_embedding(
    client: TestClient, fake_upstream: FakeUpstream, embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    """A new context holds no entry: the request goes upstream while its question is still
    being embedded, and the answer is written to L2 with that same embedding once it comes."""
    verifier.scores[(PARAPHRASE, QUESTION)] = 0.93
    embedder.gate = asyncio.Event()
    response = await client.post(CHAT, json={"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}]},
                                 headers={"Authorization": f"Bearer {client.app[TEST_KEY]}", **RAW})
    assert response.status == 200 and response.headers["X-Reflex-Status"] == "miss"
    await response.read()  # answered while the embedding is still held at the gate
    assert embedder.calls == [[QUESTION]] and fake_upstream.chat_count == 1
    embedder.gate.set()
    await client.app[STATE].settle()
    assert embedder.calls == [[QUESTION]]  # the lookup's embedding was the write's: never twice
    metrics = await (await client.get("/metrics")).text()
    assert 'reflex_gateway_semantic_lookups_total{outcome="empty_scope"} 1.0' in metrics

    # the scope is populated now: the next lookup waits for its embedding and verifies
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert verifier.calls == [(PARAPHRASE, [QUESTION])]
    metrics = await (await client.get("/metrics")).text()
    assert 'reflex_gateway_semantic_lookups_total{outcome="verified"} 1.0' in metrics


async def test_embedder_outage_degrades_reports_and_recovers(
    client: TestClient, fake_upstream: FakeUpstream, embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    verifier.default = 0.9
    embedder.down = True
    _, headers, _ = await chat(client, QUESTION)
    assert headers["X-Reflex-Status"] == "miss"
    ready = await client.get("/ready")
    assert ready.status == 503 and (await ready.json())["failing"] == ["embedder"]
    # the L1 write still happened; the L2 write needed an embedding and was skipped
    _, headers, _ = await chat(client, QUESTION)
    assert headers["X-Reflex-Status"] == "hit-l1-exact"

    embedder.down = False
    assert (await client.get("/ready")).status == 200
    await chat(client, QUESTION, headers={"X-Reflex-Cache": "refresh"})  # stored again, embedded at write time
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "hit-l3-verified"


async def test_stalled_embedder_is_cut_at_its_deadline(client: TestClient, embedder: ControlledEmbedder) -> None:
    embedder.stall = 2.0
    _, headers, _ = await chat(client, QUESTION)
    assert headers["X-Reflex-Status"] == "miss"
    metrics = await (await client.get("/metrics")).text()
    assert 'reflex_gateway_tier_failures_total{component="embedder",reason="timeout"}' in metrics


async def test_tenant_model_and_context_isolation(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier
) -> None:
    verifier.default = 1.0
    await chat(client, QUESTION)
    cases = {
        "other tenant": dict(key=client.app[TEST_KEY] + "-bob"),
        "other model": dict(model="other-model"),
        "other system prompt": dict(messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": PARAPHRASE}]),
        "other sampling": dict(temperature=1.5),
    }
    for name, kwargs in cases.items():
        _, headers, _ = await chat(client, PARAPHRASE if "messages" not in kwargs else None, **kwargs)
        assert headers["X-Reflex-Status"] == "miss", name
    assert verifier.calls == []  # L2's filter found no candidate: nothing reached the verifier
    assert fake_upstream.chat_count == 1 + len(cases)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "result"}],
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Sure,"}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
    ],
    ids=["tool-result", "assistant-prefill", "whitespace", "image-only"],
)
async def test_ineligible_requests_skip_l2_and_l3(
    client: TestClient, embedder: ControlledEmbedder, verifier: ControlledVerifier, messages: list[dict[str, Any]]
) -> None:
    verifier.default = 1.0
    _, headers, _ = await chat(client, messages=messages)
    assert headers["X-Reflex-Status"] == "miss"
    _, headers, _ = await chat(client, messages=messages)
    assert headers["X-Reflex-Status"] == "hit-l1-exact"  # L1 still serves them
    assert embedder.calls == [] and verifier.calls == []


async def test_l2_failure_is_a_plain_miss(
    make_client: Callable[..., Any], l2: L2Store, verifier: ControlledVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client()
    verifier.default = 1.0
    await chat(client, QUESTION)

    async def broken_search(**kwargs: Any) -> Any:
        raise TierUnavailable("l2", "unavailable", "test says down")

    monkeypatch.setattr(l2, "search", broken_search)
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "miss"
    assert verifier.calls == []  # nothing to verify, nothing served


async def test_semantic_off_never_touches_the_tiers(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    client = await make_client(semantic=False)
    await chat(client, QUESTION)
    _, headers, _ = await chat(client, PARAPHRASE)
    assert headers["X-Reflex-Status"] == "miss"
    assert embedder.calls == [] and verifier.calls == []
    assert (await (await client.get("/ready")).json())["components"] == {"memory": "ok"}


async def test_tiers_built_from_settings_degrade_when_the_services_are_down(
    aiohttp_client: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Real gRPC clients from REFLEX_EMBEDDER_URL/REFLEX_VERIFIER_URL pointing at ports where
    nothing listens: the gateway still starts and answers (misses), /ready names them."""
    from tests.support.redis_server import free_port

    settings = gateway_settings(
        fake_upstream,
        semantic=True,
        embedder_url=f"127.0.0.1:{free_port()}",
        verifier_url=f"127.0.0.1:{free_port()}",
        storage_path=tmp_path,
        embedder_timeout_ms=500,
    )
    app = create_app(settings)
    app[TEST_KEY] = "sk-anyone"
    client = await aiohttp_client(app)
    status, headers, body = await chat(client, QUESTION)
    assert status == 200 and headers["X-Reflex-Status"] == "miss"
    assert body["choices"][0]["message"]["content"] == f"Answer #1 to: {QUESTION}"
    ready = await client.get("/ready")
    assert ready.status == 503
    assert {"embedder", "verifier"} <= set((await ready.json())["failing"])
    _, headers, _ = await chat(client, QUESTION)
    assert headers["X-Reflex-Status"] == "hit-l1-exact"  # L1 keeps working without the models


# ------------------------------------------------------------------ circuit breaker


async def test_a_stalled_verifier_costs_one_deadline_then_is_skipped_until_a_probe(
    make_client: Callable[..., Any], embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    # A SIGSTOPped verifier answers nothing: without the breaker every request would wait the
    # whole verifier deadline (300 ms here) before going upstream.
    client = await make_client(tier_retry_secs=0.6)
    await chat(client, QUESTION)  # stored: later questions on the topic find a candidate
    rewordings = [f"{PARAPHRASE} (take {i})" for i in range(6)]  # each a new L1 key
    embedder.topics.update({r: "css" for r in rewordings})  # each one a new L1 key, one topic
    verifier.stall = 5.0
    for rewording in rewordings[:2]:  # two deadlines in a row open the breaker (one would not)
        _, headers, _ = await chat(client, rewording)
        assert headers["X-Reflex-Status"] == "miss"
    failed_at = asyncio.get_running_loop().time()
    calls_after_the_timeout = len(verifier.calls)
    for rewording in rewordings[2:5]:  # inside the pause: a plain miss without calling the verifier
        _, headers, _ = await chat(client, rewording)
        assert headers["X-Reflex-Status"] == "miss"
    assert len(verifier.calls) == calls_after_the_timeout
    failures = client.app[STATE].metrics.tier_failures
    assert failures.labels("verifier", "circuit_open").value == 3
    verifier.stall = 0.0
    # the misses above were stored on the same topic too, so the nearest entry may be any of them
    verifier.default = 0.99
    await asyncio.sleep(max(0.0, failed_at + 0.7 - asyncio.get_running_loop().time()))
    _, headers, _ = await chat(client, rewordings[5])  # the probe: the verifier is back
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert len(verifier.calls) == calls_after_the_timeout + 1


async def test_a_question_longer_than_the_models_read_skips_the_semantic_tiers(
    make_client: Callable[..., Any], embedder: ControlledEmbedder
) -> None:
    # Over 4 MiB a question would exceed gRPC's message limit: the caller's input would be
    # counted and logged as an embedder outage. It never reaches the embedder at all.
    client = await make_client(l2_max_question_chars=10_000)
    long_question = "Explain this log line: " + "x" * 20_000
    for expected in ("miss", "hit-l1-exact"):
        _, headers, _ = await chat(client, long_question)
        assert headers["X-Reflex-Status"] == expected
    assert embedder.calls == []
    metrics = client.app[STATE].metrics
    assert metrics.exact_only.labels("question_too_long").value == 2
    assert metrics.tier_failures.labels("embedder", "unavailable").value == 0


def test_calls_in_flight_at_a_failure_do_not_open_the_breaker() -> None:
    """A replica killed with several calls on it fails them all at once: one event, not a
    streak (round_robin sends the next calls to the other replicas). Calls begun after a
    failure that fail too do open it."""
    now = [100.0]
    health = ComponentHealth(retry_secs=5.0, clock=lambda: now[0])
    began = health.now()
    now[0] += 0.01
    for _ in range(4):  # all four were in flight when the first failed
        health.failed("embedder", "unavailable", "replica gone", started_at=began)
    assert not health.skipping("embedder")
    health.ok("embedder")
    now[0] += 0.01
    for _ in range(2):  # two calls, each begun after the previous failure
        began = health.now()
        now[0] += 0.01
        health.failed("embedder", "unavailable", "down", started_at=began)
    assert health.skipping("embedder")
