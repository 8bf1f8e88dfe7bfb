"""The Responses protocol through the verified cascade (L1 -> L2 -> L3), with Codex-shaped requests.

The same unit layer as tests/gateway/test_cascade.py (whose fixtures conftest.py shares): the L2 store
is the real embedded Qdrant Edge shard, the embedder and verifier are the in-test ones that let
a test choose similarities and scores exactly. The real models run in tests/agents/test_codex.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.gateway.protocols.base import SseParser
from services.gateway.state import STATE
from tests.gateway.conftest import RAW
from tests.gateway.test_cascade import (
    PARAPHRASE,
    QUESTION,
    TEST_KEY,
    ControlledEmbedder,
    ControlledVerifier,
)
from tests.responses.codex_request import (
    PROMPT,
    TITLE_FORMAT,
    codex_request,
    title_request,
)
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream

assert PROMPT == QUESTION  # the embedder puts QUESTION and PARAPHRASE on one topic
PATH = "/v1/responses"


async def respond(client: TestClient, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                  path: str = PATH) -> tuple[dict[str, str], Any]:
    """POST a body; returns (headers, the JSON answer or the list of (event, data) SSE pairs)."""
    key = client.app[TEST_KEY]
    response = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}", **RAW, **(headers or {})})
    data = await response.read()
    await client.app[STATE].settle()  # the background write is done before the next request
    assert response.status == 200, data
    if body.get("stream"):
        return dict(response.headers), [(e, orjson.loads(d)) for e, d in SseParser().feed(data)]
    return dict(response.headers), orjson.loads(data)


def output_text(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])


async def test_a_reworded_codex_prompt_is_a_verified_hit_with_fresh_ids(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier
) -> None:
    verifier.scores[(PARAPHRASE, QUESTION)] = 0.93
    headers, first = await respond(client, codex_request(stream=False))
    assert headers["X-Reflex-Status"] == "miss"
    reworded = codex_request(PARAPHRASE, stream=False)
    headers, hit = await respond(client, reworded)
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert float(headers["X-Reflex-Verifier-Score"]) == pytest.approx(0.93)
    assert verifier.calls == [(PARAPHRASE, [QUESTION])]  # the question, never the environment
    assert output_text(hit) == output_text(first) == f"Answer #1 to: {QUESTION}"
    assert hit["id"].startswith("resp_") and hit["id"] != first["id"]
    assert hit["output"][0]["id"].startswith("msg_") and hit["output"][0]["id"] != first["output"][0]["id"]
    assert hit["model"] == "gpt-5-codex"  # (the model is part of the L2 scope: another one is a miss)
    assert hit["prompt_cache_key"] == reworded["prompt_cache_key"]  # the asker's own, not the first run's
    assert hit["usage"] == first["usage"]
    assert len(fake_upstream.calls_to(PATH)) == 1


async def test_a_verified_hit_streams_with_one_fresh_response_id(client: TestClient, verifier: ControlledVerifier) -> None:
    verifier.default = 0.9
    _, first = await respond(client, codex_request(stream=False))
    headers, events = await respond(client, codex_request(PARAPHRASE))
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert headers["Content-Type"].startswith("text/event-stream")
    ids = {data["response"]["id"] for _, data in events if "response" in data}
    assert len(ids) == 1 and ids != {first["id"]}
    text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
    assert text == f"Answer #1 to: {QUESTION}"
    assert events[-1][0] == "response.completed" and events[-1][1]["response"]["model"] == "gpt-5-codex"


async def test_function_call_answers_are_never_served_from_l2(
    client: TestClient, fake_upstream: FakeUpstream, embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    verifier.default = 1.0  # it WOULD say yes
    fake_upstream.fail_next(fu.TOOL_CALLS)
    _, first = await respond(client, codex_request(stream=False))
    assert first["output"][0]["type"] == "function_call"
    headers, answer = await respond(client, codex_request(PARAPHRASE, stream=False))
    assert headers["X-Reflex-Status"] == "miss"
    assert output_text(answer) == f"Answer #2 to: {PARAPHRASE}"
    assert verifier.calls == []  # no candidate: the call was never written to L2
    headers, again = await respond(client, codex_request())  # the identical request: L1 serves it
    assert headers["X-Reflex-Status"] == "hit-l1-exact"
    assert [d["item"]["type"] for e, d in again if e == "response.output_item.done"] == ["function_call"]


async def test_a_title_call_never_gets_the_main_calls_answer(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier
) -> None:
    verifier.default = 1.0
    await respond(client, codex_request(stream=False))
    headers, title = await respond(client, {**title_request(PARAPHRASE), "stream": False})
    assert headers["X-Reflex-Status"] == "miss"
    assert orjson.loads(output_text(title)) == {"title": f"Answer #2 to: {PARAPHRASE}"[:60]}
    headers, main = await respond(client, codex_request(PARAPHRASE, stream=False))
    assert headers["X-Reflex-Status"] == "hit-l3-verified"  # the main call's own entry
    assert output_text(main) == f"Answer #1 to: {QUESTION}"
    # and the reverse: a plain request with an output schema
    plain = {"model": "fake-model", "store": False}
    await respond(client, {**plain, "input": QUESTION, "text": {"format": TITLE_FORMAT}})
    headers, _ = await respond(client, {**plain, "input": PARAPHRASE})
    assert headers["X-Reflex-Status"] == "miss"


async def test_answers_never_cross_protocols_in_l2(
    client: TestClient, fake_upstream: FakeUpstream, verifier: ControlledVerifier
) -> None:
    verifier.default = 1.0
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": QUESTION}]}
    await respond(client, chat, path="/v1/chat/completions")
    headers, answer = await respond(client, {"model": "fake-model", "input": PARAPHRASE, "store": False})
    assert headers["X-Reflex-Status"] == "miss" and output_text(answer) == f"Answer #2 to: {PARAPHRASE}"
    assert verifier.calls == []  # the chat entry was not even a candidate
    headers, chat_hit = await respond(
        client, {**chat, "messages": [{"role": "user", "content": PARAPHRASE}]}, path="/v1/chat/completions")
    assert headers["X-Reflex-Status"] == "hit-l3-verified"
    assert chat_hit["choices"][0]["message"]["content"] == f"Answer #1 to: {QUESTION}"  # chat's own answer


async def test_another_environment_is_another_context(client: TestClient, verifier: ControlledVerifier) -> None:
    verifier.default = 1.0
    await respond(client, codex_request(stream=False))
    moved = codex_request(PARAPHRASE, stream=False)
    moved["input"][2]["content"][0]["text"] = moved["input"][2]["content"][0]["text"].replace("/work/demo", "/srv/app")
    headers, _ = await respond(client, moved)
    assert headers["X-Reflex-Status"] == "miss"
    assert verifier.calls == []


async def test_stored_requests_never_reach_the_semantic_tiers(
    client: TestClient, embedder: ControlledEmbedder, verifier: ControlledVerifier
) -> None:
    verifier.default = 1.0
    for question in (QUESTION, PARAPHRASE, QUESTION):
        headers, _ = await respond(client, {**codex_request(question, stream=False), "store": True})
        assert headers["X-Reflex-Status"] == "bypass"
    assert embedder.calls == [] and verifier.calls == []


async def test_auto_format_serves_prose_hits_raw(client: TestClient, verifier: ControlledVerifier) -> None:
    verifier.default = 1.0
    _, first = await respond(client, codex_request(stream=False))
    key = client.app[TEST_KEY]
    response = await client.post(PATH, json=codex_request(PARAPHRASE, stream=False),
                                 headers={"Authorization": f"Bearer {key}", "X-Reflex-Format": "auto"})
    assert response.headers["X-Reflex-Status"] == "hit-l3-verified"
    assert output_text(await response.json()) == output_text(first)  # no envelope around prose
    await client.app[STATE].settle()  # the paraphrase was promoted to L1
    response = await client.post(PATH, json=codex_request(PARAPHRASE, stream=False),
                                 headers={"Authorization": f"Bearer {key}", "X-Reflex-Format": "tauq"})
    assert response.headers["X-Reflex-Status"] == "hit-l1-exact"
    assert output_text(await response.json()).startswith("semantic_request")  # asked for: the envelope


@pytest.fixture
async def client(make_client: Any) -> TestClient:
    return await make_client()
