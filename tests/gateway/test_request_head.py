"""A request's head (request_head.py) is read once per distinct body and deciding headers, and
kept: an exact repeat reuses it. Each test checks that the reuse changes nothing but the cost."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from reflex.settings import ResponseFormat
from services.gateway.errors import GatewayError
from services.gateway.keys import tenant_id
from services.gateway.protocols import all_protocols
from services.gateway.protocols.anthropic_messages import AnthropicMessages
from services.gateway.protocols.openai_chat import ChatCompletions
from services.gateway.request_head import CacheMode, RequestHeads

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
MESSAGES = (b'{"model": "m", "max_tokens": 64, '
            b'"messages": [{"role": "user", "content": "What is the capital of France?"}]}')


def _heads(max_question_chars: int = 4000) -> RequestHeads:
    return RequestHeads(max_question_chars=max_question_chars, default_format=ResponseFormat.RAW)


def test_an_exact_repeat_reuses_its_head_and_parses_once() -> None:
    chat, parses = ChatCompletions(), []
    original = chat.parse

    def parse(body: bytes):  # type: ignore[no-untyped-def]
        parses.append(body)
        return original(body)

    chat.parse = parse  # type: ignore[method-assign]
    heads = _heads()
    headers = CIMultiDict({"Authorization": "Bearer sk-a", "X-Request-Id": "1"})
    first = heads.read(chat, CHAT, headers)
    # another value of a header that decides nothing: still the same head
    again = heads.read(chat, CHAT, CIMultiDict({"authorization": "Bearer sk-a", "X-Request-Id": "2"}))
    assert again is first and parses == [CHAT]
    assert first.keys.tenant == tenant_id("sk-a") and first.mode is CacheMode.LOOKUP
    assert first.credential is not None and first.credential.value == "Bearer sk-a"
    # another tenant: its own head and keys, but the body is not parsed again
    other = heads.read(chat, CHAT, CIMultiDict({"Authorization": "Bearer sk-b"}))
    assert other is not first and parses == [CHAT]
    assert other.keys.tenant == tenant_id("sk-b") and other.keys.l1_key != first.keys.l1_key


@pytest.mark.parametrize(("headers", "mode", "fmt"), [
    ({"X-Reflex-Cache": "bypass"}, CacheMode.NO_STORE, ResponseFormat.RAW),
    ({"Cache-Control": "no-cache"}, CacheMode.REFRESH, ResponseFormat.RAW),
    ({"X-Reflex-Format": "tauq"}, CacheMode.LOOKUP, ResponseFormat.TAUQ),
    ({"x-api-key": "sk-c"}, CacheMode.LOOKUP, ResponseFormat.RAW),
])
def test_each_deciding_header_reads_a_head_of_its_own(headers: dict[str, str], mode: CacheMode,
                                                      fmt: ResponseFormat) -> None:
    chat, heads = ChatCompletions(), _heads()
    plain = heads.read(chat, CHAT, CIMultiDict({"Authorization": "Bearer sk-a"}))
    if "x-api-key" not in headers:
        headers = {"Authorization": "Bearer sk-a", **headers}
    head = heads.read(chat, CHAT, CIMultiDict(headers))
    assert head is not plain and (head.mode, head.format) == (mode, fmt)
    assert heads.read(chat, CHAT, CIMultiDict(headers)) is head


def test_the_protocols_answer_headers_make_their_own_heads_and_keys() -> None:
    messages, heads = AnthropicMessages(), _heads()
    base = {"x-api-key": "sk-a", "anthropic-version": "2023-06-01"}
    plain = heads.read(messages, MESSAGES, CIMultiDict(base))
    beta = heads.read(messages, MESSAGES, CIMultiDict({**base, "anthropic-beta": "interleaved-thinking-2025-05-14"}))
    assert beta is not plain and beta.keys.l1_key != plain.keys.l1_key
    assert heads.read(messages, MESSAGES, CIMultiDict({**base, "anthropic-beta": "interleaved-thinking-2025-05-14"})) is beta


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: p.name)
def test_a_protocols_answer_headers_read_only_the_headers_it_names(protocol) -> None:  # type: ignore[no-untyped-def]
    # The head is kept by the values of the headers the protocol names; one it read without
    # naming would let a request reuse a head read for different headers.
    sent = CIMultiDict({"anthropic-version": "2023-06-01", "anthropic-beta": "b1, b2", "OpenAI-Beta": "assistants=v2",
                        "OpenAI-Organization": "org", "X-Stainless-Lang": "js", "User-Agent": "agent/1.0",
                        "Authorization": "Bearer sk-a"})
    named = CIMultiDict((k, v) for k, v in sent.items() if k.lower() in {n.lower() for n in protocol.answer_header_names})
    assert protocol.answer_headers(sent) == protocol.answer_headers(named)


def test_a_bad_deciding_header_is_refused_every_time_and_nothing_is_kept() -> None:
    chat, heads = ChatCompletions(), _heads()
    for _ in range(2):
        with pytest.raises(GatewayError, match="X-Reflex-Cache"):
            heads.read(chat, CHAT, CIMultiDict({"X-Reflex-Cache": "sometimes"}))
    assert len(heads) == 0


def test_a_question_too_long_for_l2_is_marked_on_the_kept_head() -> None:
    chat, heads = ChatCompletions(), _heads(max_question_chars=10)
    head = heads.read(chat, CHAT, CIMultiDict())
    assert head.question_too_long and head.parsed.question is None and head.keys.scope is None
    assert heads.read(chat, CHAT, CIMultiDict()) is head and head.keys.tenant == "anonymous"
