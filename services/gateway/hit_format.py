"""How a cache hit's content is presented (raw, or a Tauq envelope), and what the hit saved.

``auto`` (the default) serves the envelope only where it measurably saves tokens against the
raw content, which in practice means answers that are JSON: prose, code and edit blocks reach
the client exactly as the provider wrote them, because a coding agent parses its answers
(Aider's SEARCH/REPLACE blocks, for one, must arrive intact). ``raw`` never wraps; ``tauq``
always does where the content is plain text. The envelope is the same in every protocol: it
replaces each prose text of the answer (a chat choice's content, an Anthropic text block, a
Responses output_text) with a small Tauq document::

    semantic_request "How do I centre a div?"      # the cached question that was matched
    response {
      content "Use flexbox: ..."                   # the cached answer
    }

so an agent can check what its request was matched to. When the cached answer is itself a
JSON object or array, it is embedded as Tauq structure (``content { ... }``), which is where
Tauq is shorter than the JSON; prose and code stay one quoted string and cost a little more
than raw. Only the content changes: the completion around it (ids, usage, finish_reason)
is the cached one. ``semantic_request`` is ``null`` when the entry has no question (an
exact repeat of a request with no user question, e.g. one ending in a tool result); a
question longer than QUESTION_MAX_CHARS is shown with its middle cut out.

Served ``raw``, whatever was asked, when a client parses the content or when the content is
not plain text: the request asked for JSON output (``response_format`` ``json_object`` /
``json_schema``) or for ``logprobs`` (they describe the raw tokens), or a choice carries
tool calls, a function call, or no string content. Streaming changes nothing: a ``tauq``
document is replayed as SSE content chunks like any text; a stream that asked for raw gets
raw.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import orjson

from reflex import tokens
from reflex.settings import ResponseFormat
from reflex.tauq import TauqError, dumps
from services.gateway.protocols.base import HitReason, ParsedRequest, ProtocolAdapter
from services.gateway.protocols.openai_chat import ChatCompletions

# Why a hit was served as it was (a bounded set: usable as a metric label).
REASON_TAUQ = HitReason.TAUQ
REASON_REQUESTED_RAW = HitReason.REQUESTED_RAW
REASON_JSON_OUTPUT = HitReason.JSON_OUTPUT
REASON_LOGPROBS = HitReason.LOGPROBS
REASON_TOOL_CALLS = HitReason.TOOL_CALLS
REASON_NOT_TEXT = HitReason.NOT_TEXT
REASON_AUTO_RAW = HitReason.AUTO_RAW

# Longest matched question repeated in full in the envelope (characters): about 250 tokens
# of English. Longer ones keep their first two thirds and last third around QUESTION_CUT_MARK:
# enough to recognise the question, without repeating a pasted document on every hit.
QUESTION_MAX_CHARS = 1000
QUESTION_CUT_MARK = " [...] "



@dataclass(slots=True)
class HitAccounting:  # not frozen: a frozen dataclass's __init__ costs every hit a microsecond
    format: ResponseFormat  # what was actually served
    tokens_saved: int  # prompt + completion tokens not paid to the provider
    format_delta: int  # tokens of the served content minus tokens of the raw content
    reason: str = REASON_TAUQ  # why this format (one of the REASON_* values)


def present_hit(
    protocol: ProtocolAdapter,
    answer: dict[str, Any],
    *,
    question: str | None,
    request: ParsedRequest,
    requested: ResponseFormat,
) -> tuple[dict[str, Any], HitAccounting]:
    """Return a copy of ``answer`` whose prose is presented in the format to serve, plus the
    token accounting for the X-Reflex-Tokens-Saved / -Format-Delta headers.

    ``auto`` serves the Tauq envelope only when it is shorter than the raw content (a JSON
    answer, typically); prose, code and edit blocks reach the client untouched.
    """
    saved = tokens_saved(protocol, answer, request)
    # A raw hit is the cached answer itself: served as it is, never copied (the copy was the
    # largest single cost of an exact hit). Only a hit whose text is rewritten gets a copy.
    if requested is ResponseFormat.RAW:
        return answer, HitAccounting(ResponseFormat.RAW, saved, 0, REASON_REQUESTED_RAW)
    reason = protocol.raw_reason(answer, request)
    if reason is not None:
        return answer, HitAccounting(ResponseFormat.RAW, saved, 0, reason)
    if requested is ResponseFormat.AUTO and not any(_json_answer(text) is not None
                                                    for text, _ in protocol.text_slots(answer)):
        return answer, HitAccounting(ResponseFormat.RAW, saved, 0, REASON_AUTO_RAW)
    served = copy.deepcopy(answer)
    slots = list(protocol.text_slots(served))
    if not slots:
        return served, HitAccounting(ResponseFormat.RAW, saved, 0, REASON_NOT_TEXT)
    if requested is ResponseFormat.AUTO:
        return _auto(served, slots, question, saved)
    delta = 0
    for raw, set_text in slots:
        document = envelope(question, raw)
        delta += tokens.count_tokens(document) - tokens.count_tokens(raw)
        set_text(document)
    return served, HitAccounting(ResponseFormat.TAUQ, saved, delta, REASON_TAUQ)


def _auto(
    served: dict[str, Any], slots: list[tuple[str, Any]], question: str | None, saved: int
) -> tuple[dict[str, Any], HitAccounting]:
    """Each text on its own: the envelope where it is shorter than the raw text, which only a
    JSON answer can be (prose and code stay one quoted string plus the matched question, so
    they are not even tokenized: the common hit costs nothing here)."""
    delta = 0
    wrapped = False
    for raw, set_text in slots:
        if _json_answer(raw) is None:
            continue
        document = envelope(question, raw)
        gain = tokens.count_tokens(document) - tokens.count_tokens(raw)
        if gain < 0:
            set_text(document)
            delta += gain
            wrapped = True
    if not wrapped:
        return served, HitAccounting(ResponseFormat.RAW, saved, 0, REASON_AUTO_RAW)
    return served, HitAccounting(ResponseFormat.TAUQ, saved, delta, REASON_TAUQ)


def format_hit(
    completion: dict[str, Any],
    *,
    question: str | None,
    request: dict[str, Any],
    requested: ResponseFormat,
    stream: bool,
) -> tuple[dict[str, Any], HitAccounting]:
    """``present_hit`` for a chat completion and its chat request (the body as a dict).

    ``stream`` does not change the decision (see the module docstring); it is part of the
    signature so that a stream-specific rule has one place to live.
    """
    chat = ChatCompletions()
    parsed = ParsedRequest(protocol=chat.name, body=request, model=str(request.get("model", "")),
                           stream=stream, canonical=b"")
    return present_hit(chat, completion, question=question, request=parsed, requested=requested)


def envelope(question: str | None, content: str) -> str:
    """The Tauq document served for one cached answer."""
    response: dict[str, Any] = {"content": content}
    document = {"semantic_request": _shorten(question), "response": response}
    structured = _json_answer(content)
    if structured is not None:
        response["content"] = structured
        try:
            return dumps(document)
        except TauqError:
            # nested deeper than the codec goes: serve the answer as the text it is
            response["content"] = content
    return dumps(document)


def _shorten(question: str | None) -> str | None:
    """The matched question, its middle cut out when it is long.

    The agent already holds its own question; ``semantic_request`` is there to let it see
    *what* was matched, which the start and the end show. Repeating a pasted document in
    full would make every hit cost more than the answer (the growth this envelope replaces).
    """
    if question is None or len(question) <= QUESTION_MAX_CHARS:
        return question
    head = QUESTION_MAX_CHARS * 2 // 3
    tail = QUESTION_MAX_CHARS - head
    return question[:head] + QUESTION_CUT_MARK + question[-tail:]


def _json_answer(content: str) -> Any:
    """The answer as a JSON object or array when the whole content is one, else None.

    Python's json rather than orjson: orjson turns integers beyond 64 bits into floats,
    silently changing the answer. NaN/Infinity (not JSON) and what cannot be read (too deep,
    too many digits) leave the content as text. Scalars stay text too: the content "42" is
    not the number 42.
    """
    stripped = content.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        value = json.loads(stripped, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def tokens_saved(protocol: ProtocolAdapter, answer: dict[str, Any], request: ParsedRequest) -> int:
    """Input plus output tokens the provider did not bill for this hit.

    The provider's own usage of the cached call when it has the figure; otherwise an
    o200k_base count: the prompt from this request, the answer from its text. (For a semantic
    hit the cached prompt is another wording of this one, so its count is close to, not equal
    to, what this request would have cost.)
    """
    if protocol.name != ChatCompletions.name:
        billed = protocol.usage_tokens(answer)
        if billed:
            return billed
        texts = "".join(text for text, _ in protocol.text_slots(copy.deepcopy(answer)))
        return tokens.count_tokens(orjson.dumps(request.body).decode()) + tokens.count_tokens(texts)
    return _chat_tokens_saved(answer, request.body)


def _chat_tokens_saved(completion: dict[str, Any], request: dict[str, Any]) -> int:
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = tokens.count_prompt_tokens(request)
    answer = _count(usage.get("completion_tokens"))
    if answer is None:
        answer = sum(_completion_tokens(choice) for choice in completion.get("choices") or ())
    return prompt + answer


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _completion_tokens(choice: Any) -> int:
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return 0
    total = 0
    if isinstance(message.get("content"), str):
        total += tokens.count_tokens(message["content"])
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            total += tokens.count_tokens(str(function.get("name") or ""))
            total += tokens.count_tokens(str(function.get("arguments") or ""))
    return total
