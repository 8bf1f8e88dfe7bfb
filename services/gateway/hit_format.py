"""How a cache hit's content is presented (Tauq envelope or raw), and what the hit saved.

``tauq`` replaces each choice's assistant content with a small Tauq document::

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

from reflex import tokens
from reflex.settings import ResponseFormat
from reflex.tauq import TauqError, dumps

# Why a hit was served as it was (a bounded set: usable as a metric label).
REASON_TAUQ = "tauq"
REASON_REQUESTED_RAW = "requested_raw"
REASON_JSON_OUTPUT = "json_output"
REASON_LOGPROBS = "logprobs"
REASON_TOOL_CALLS = "tool_calls"
REASON_NOT_TEXT = "not_text"

# Longest matched question repeated in full in the envelope (characters): about 250 tokens
# of English. Longer ones keep their first two thirds and last third around QUESTION_CUT_MARK:
# enough to recognise the question, without repeating a pasted document on every hit.
QUESTION_MAX_CHARS = 1000
QUESTION_CUT_MARK = " [...] "

_JSON_OUTPUT_TYPES = frozenset({"json_object", "json_schema"})
_CALL_FINISH_REASONS = frozenset({"tool_calls", "function_call"})


@dataclass(frozen=True, slots=True)
class HitAccounting:
    format: ResponseFormat  # what was actually served
    tokens_saved: int  # prompt + completion tokens not paid to the provider
    format_delta: int  # tokens of the served content minus tokens of the raw content
    reason: str = REASON_TAUQ  # why this format (one of the REASON_* values)


def format_hit(
    completion: dict[str, Any],
    *,
    question: str | None,
    request: dict[str, Any],
    requested: ResponseFormat,
    stream: bool,
) -> tuple[dict[str, Any], HitAccounting]:
    """Return a copy of ``completion`` whose message contents are presented in the format to
    serve, plus the token accounting for the X-Reflex-Tokens-Saved / -Format-Delta headers.

    ``stream`` does not change the decision (see the module docstring); it is part of the
    signature so that a stream-specific rule has one place to live.
    """
    served = copy.deepcopy(completion)
    saved = tokens_saved(completion, request)
    reason = _raw_reason(completion, request, requested)
    if reason is not None:
        return served, HitAccounting(ResponseFormat.RAW, saved, 0, reason)
    delta = 0
    for choice in served["choices"]:
        message = choice["message"]
        raw = message["content"]
        document = envelope(question, raw)
        message["content"] = document
        delta += tokens.count_tokens(document) - tokens.count_tokens(raw)
    return served, HitAccounting(ResponseFormat.TAUQ, saved, delta, REASON_TAUQ)


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


def _raw_reason(completion: dict[str, Any], request: dict[str, Any], requested: ResponseFormat) -> str | None:
    if requested != ResponseFormat.TAUQ:
        return REASON_REQUESTED_RAW
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in _JSON_OUTPUT_TYPES:
        return REASON_JSON_OUTPUT
    if request.get("logprobs") or request.get("top_logprobs"):
        return REASON_LOGPROBS
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return REASON_NOT_TEXT
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            return REASON_NOT_TEXT
        calls = message.get("tool_calls") or message.get("function_call")
        if calls or choice.get("finish_reason") in _CALL_FINISH_REASONS:
            return REASON_TOOL_CALLS
        if not isinstance(message.get("content"), str):
            return REASON_NOT_TEXT
        if choice.get("logprobs"):
            return REASON_LOGPROBS
    return None


def tokens_saved(completion: dict[str, Any], request: dict[str, Any]) -> int:
    """Prompt plus completion tokens the provider did not bill for this hit.

    The provider's own ``usage`` of the cached call when it has the figure; otherwise an
    o200k_base count: the prompt from this request's messages, the completion from the
    cached answer. (For a semantic hit the cached prompt is another wording of this one, so
    its count is close to, not equal to, what this request would have cost.)
    """
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
