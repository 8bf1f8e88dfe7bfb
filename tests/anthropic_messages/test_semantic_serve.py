"""The semantic tiers for ``/v1/messages``, end to end: ``reflex serve`` as a user runs it (a
real process with MiniLM, the shipped verifier and an embedded L2 shard) whose Anthropic
upstream is the fake provider, driven by the official ``anthropic`` SDK and by Claude
Code-shaped bodies.

The rewordings were chosen by scoring them with the shipped verifier first (query = the new
wording, candidate = the cached one; threshold 0.92): "How can I center a div using CSS?"
0.99, "How can I reverse a list in Python?" 0.97, "How can I undo ... keep my changes?" 0.99;
the trap "... in Rust?" 0.005.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from reflex.settings import VerifierDecisionSettings
from services.gateway.protocols.anthropic_messages import StreamAssembler
from tests.agents.conftest import ServeProcess
from tests.anthropic_messages import shapes
from tests.support import fake_anthropic as fa
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow  # a `reflex serve` start (the models load once per module)

ALIAS = "claude-fake-latest"  # the fake answers with a dated snapshot name, as the API does
KEY = "sk-ant-semantic"
THRESHOLD = VerifierDecisionSettings.model_fields["threshold"].default


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("serve"), upstream)
    yield process
    if process.process.poll() is None:
        assert process.stop() == 0, process.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(serve: ServeProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=serve.base, api_key=KEY, max_retries=0, timeout=60)


class Asker:
    """Asks through the SDK and waits for a miss's cache writes before returning."""

    def __init__(self, serve: ServeProcess, upstream: FakeUpstream, client: anthropic.Anthropic) -> None:
        self.serve, self.upstream, self.client = serve, upstream, client

    def ask(self, question: str, *, stream: bool = False, **kwargs: Any
            ) -> tuple[str, anthropic.types.Message, dict[str, str]]:
        params: dict[str, Any] = {"model": ALIAS, "max_tokens": 512, "system": "Answer briefly.",
                                  "messages": [{"role": "user", "content": question}], **kwargs}
        with self.settled():
            if stream:
                with self.client.messages.stream(**params) as events:
                    message, headers = events.get_final_message(), dict(events.response.headers)
            else:
                raw = self.client.messages.with_raw_response.create(**params)
                message, headers = raw.parse(), dict(raw.headers)
        return headers["x-reflex-status"], message, headers

    def settled(self) -> _Settled:
        return _Settled(self)

    @property
    def calls(self) -> int:
        return len(self.upstream.calls_to(fa.MESSAGES_PATH))


class _Settled:
    """Around a request: afterwards, wait until each upstream call it made was written to L1,
    and until no write is pending (L2's waits for the question's embedding)."""

    def __init__(self, asker: Asker) -> None:
        self.asker = asker

    def __enter__(self) -> None:
        self.calls, self.writes = self.asker.calls, self.asker.serve.writes("l1")

    def __exit__(self, *exc: object) -> None:
        made = self.asker.calls - self.calls
        if made and exc[0] is None:
            self.asker.serve.wait_for_writes("l1", self.writes + made)
            self.asker.serve.wait_settled()


@pytest.fixture
def asker(serve: ServeProcess, upstream: FakeUpstream, client: anthropic.Anthropic) -> Asker:
    return Asker(serve, upstream, client)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_a_reworded_question_is_a_verified_hit_with_a_fresh_id_and_the_requests_model(asker: Asker) -> None:
    status, first, _ = asker.ask("How do I center a div in CSS?")
    assert status == "miss" and first.model == "claude-fake-20261201"
    calls = asker.calls
    status, exact, _ = asker.ask("How do I center a div in CSS?")
    assert status == "hit-l1-exact" and exact.id == first.id and exact.model == first.model  # as cached

    status, hit, headers = asker.ask("How can I center a div using CSS?")
    assert status == "hit-l3-verified", headers
    assert text_of(hit) == text_of(first) and hit.stop_reason == "end_turn"
    assert hit.id.startswith("msg_") and hit.id != first.id  # presented as an answer to this request
    assert hit.model == ALIAS  # the request's own model
    assert hit.usage == first.usage  # the usage the answer first had
    assert float(headers["x-reflex-verifier-score"]) >= THRESHOLD
    assert 0.0 < float(headers["x-reflex-similarity"]) <= 1.0
    assert asker.calls == calls


def test_a_streamed_verified_hit_and_a_trap(asker: Asker) -> None:
    status, first, _ = asker.ask("How do I reverse a list in Python?", stream=True)
    assert status == "miss"
    calls = asker.calls
    status, hit, headers = asker.ask("How can I reverse a list in Python?", stream=True)
    assert status == "hit-l3-verified", headers
    assert headers["content-type"].startswith("text/event-stream")
    assert text_of(hit) == text_of(first) and hit.model == ALIAS and hit.id != first.id
    assert asker.calls == calls
    status, trap, headers = asker.ask("How do I reverse a list in Rust?", stream=True)
    assert status == "miss", headers
    assert text_of(trap).endswith("to: How do I reverse a list in Rust?")


def test_tool_use_answers_are_never_served_from_l2(asker: Asker, serve: ServeProcess, upstream: FakeUpstream) -> None:
    tools = [{"name": "git", "description": "Run git.", "input_schema": {"type": "object", "properties": {
        "args": {"type": "string"}}}}]
    question = "How do I undo the last git commit but keep my changes?"
    l2_writes = serve.writes("l2")
    upstream.fail_next(fu.TOOL_CALLS)
    status, first, _ = asker.ask(question, tools=tools)
    assert status == "miss" and first.stop_reason == "tool_use"
    status, again, _ = asker.ask(question, tools=tools)
    assert status == "hit-l1-exact" and again.model_dump() == first.model_dump()  # the identical request: L1
    assert serve.writes("l2") == l2_writes  # never offered to the semantic tiers
    status, reworded, headers = asker.ask("How can I undo the last git commit but keep my changes?", tools=tools)
    assert status == "miss", headers  # a rewording may need another tool call, or none
    assert reworded.stop_reason == "end_turn"


def post(serve: ServeProcess, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = httpx.post(f"{serve.base}/v1/messages?beta=true", json=body, timeout=60,
                          headers={"x-api-key": KEY, "anthropic-version": "2023-06-01",
                                   "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"})
    assert response.status_code == 200, response.text
    assembler = StreamAssembler()
    assembler.feed(response.content)
    message = assembler.answer()
    assert message is not None, response.text[:500]
    return response.headers["x-reflex-status"], message


def test_a_title_call_never_gets_the_main_calls_answer_and_the_reverse(asker: Asker, serve: ServeProcess) -> None:
    prompt, reworded = "How do I center a div in CSS?", "How can I center a div using CSS?"
    with asker.settled():
        status, main = post(serve, shapes.main_call(prompt, session="one"))
    assert status == "miss"
    with asker.settled():
        status, title = post(serve, shapes.title_call(prompt, session="one"))
    assert status == "miss"  # the same prompt, but another context: the output schema
    assert set(orjson.loads(title["content"][0]["text"])) == {"title"}
    status, served = post(serve, shapes.main_call(reworded, session="two"))
    assert status == "hit-l3-verified"
    assert served["content"] == main["content"]  # the main call's answer, not the title
    with asker.settled():
        status, served = post(serve, shapes.title_call(reworded, session="two"))
    assert set(orjson.loads(served["content"][0]["text"])) == {"title"}  # a title, whichever tier
    assert served["content"] != main["content"]
