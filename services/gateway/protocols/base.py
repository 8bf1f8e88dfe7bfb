"""What every client protocol gives the cache, and what the cache asks of it.

vLLM gives each endpoint its own serving module over one shared base; so does Reflex. A
protocol adapter (one module per protocol: OpenAI Chat Completions, Anthropic Messages, OpenAI
Responses) does three things and nothing else:

1. **parse** a request body into the same neutral form (``ParsedRequest``): the canonical form
   that keys the exact tier, the question the semantic tiers compare, the context that must
   match for a semantic hit, and whether the request may use the cache at all;
2. **judge** an answer in its own wire format: complete and successful (only those are
   stored), calling tools (L1 only), and assembled from a relayed stream;
3. **replay** a cached answer in its own wire format, as one JSON body or as the SSE events a
   provider would have sent, whichever way the answer was first produced.

The cascade, the stores and the handlers never learn which protocol they serve: an entry
holds the protocol's own answer object, and the protocol's name is part of every key and
every context hash, so an answer cached through one protocol is never served to another.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from services.gateway.errors import ErrorDialect, ErrorKind, GatewayError, envelope


class HitReason(StrEnum):
    """Why a hit was served in the format it was: a bounded set, used as a metric label."""

    TAUQ = "tauq"
    REQUESTED_RAW = "requested_raw"
    AUTO_RAW = "auto_raw"  # `auto`: the envelope would not have been shorter than the raw text
    JSON_OUTPUT = "json_output"  # the request asked for structured output: clients parse it
    LOGPROBS = "logprobs"  # they describe the raw tokens
    TOOL_CALLS = "tool_calls"
    NOT_TEXT = "not_text"


class UpstreamName(StrEnum):
    """Which provider base URL a protocol's requests go to (one per provider API)."""

    OPENAI = "openai"  # REFLEX_UPSTREAM_URL: Chat Completions and Responses
    ANTHROPIC = "anthropic"  # REFLEX_ANTHROPIC_UPSTREAM_URL: Messages


@dataclass(eq=False)
class ParsedRequest:
    """A request in the neutral form the cache works with. Treated as immutable (exact
    repeats share one, see repeats.py); not frozen only because a frozen dataclass's __init__
    costs every request microseconds.

    Not slotted: ``context`` is a cached property, built only when the semantic tiers need it
    (an exact hit never does, and on a 77 KB agent request it is half the parsing time).
    """

    protocol: str  # the adapter's name: part of the exact key and of the context
    body: dict[str, Any]  # the parsed JSON (the bytes are forwarded upstream untouched)
    model: str
    stream: bool
    # The request without what changes on every run and not the answer (per-run ids,
    # metadata, cache_control markers): identical requests of two runs share one exact key.
    canonical: bytes
    # The text the semantic tiers embed and verify; None: exact tier only.
    question: str | None = None
    # Builds everything else the model sees, canonical (blake3'd into the context hash); only
    # called when ``question`` is set. The context holds the protocol name and any output schema.
    context_source: Callable[[], bytes] | None = None
    # False: passed through untouched, never looked up or stored (e.g. a request that depends
    # on state held upstream); ``uncacheable_reason`` says why, as a metric label.
    cacheable: bool = True
    uncacheable_reason: str = ""

    @functools.cached_property
    def context(self) -> bytes:
        if self.question is None or self.context_source is None:
            return b""
        return self.context_source()


@dataclass(slots=True)
class SseParser:
    """Splits relayed SSE bytes into (event, data) pairs, whatever the chunk boundaries.

    Only ``event:`` and ``data:`` fields matter to the assemblers; comments and ids are
    skipped. Multi-line data is joined with newlines, as the SSE spec says.
    """

    # The unfinished line, in pieces: joined only once its end arrives, so a 32 MiB line fed in
    # 64 KiB chunks costs one pass, not one re-scan of the whole line per chunk.
    _pending: list[bytes] = field(default_factory=list)
    _event: str = ""
    _data: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        if b"\n" not in data:
            self._pending.append(data)
            return
        self._pending.append(data)
        buffer, self._pending = b"".join(self._pending), []
        *lines, tail = buffer.split(b"\n")
        if tail:
            self._pending.append(tail)
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    yield self._event, b"\n".join(self._data)
                self._event, self._data = "", []
            elif line.startswith(b"data:"):
                self._data.append(line[5:].strip())
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")


class StreamAssembly(abc.ABC):
    """Watches a relayed stream and rebuilds the answer object a non-streaming call returns."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """The stream reached its protocol's end marker ([DONE], message_stop, response.completed)."""

    @abc.abstractmethod
    def feed(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def answer(self) -> dict[str, Any] | None:
        """The assembled answer when the stream ended normally and the answer may be cached."""


class ProtocolAdapter(abc.ABC):
    """One client protocol. Instances are stateless and shared by every request."""

    name: str  # e.g. "openai.chat": in every key and context hash
    route: str  # the gateway's path, e.g. "/v1/chat/completions"
    upstream: UpstreamName
    upstream_path: str  # appended to the provider's base URL
    dialect: ErrorDialect  # the error envelope its clients read
    # the request headers answer_headers reads (it is given only these: request_head.RequestHeads)
    answer_header_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------ requests
    @abc.abstractmethod
    def parse(self, body: bytes) -> ParsedRequest:
        """Validate a body and put it in the neutral form; raise GatewayError (400) otherwise."""

    # ------------------------------------------------------------------ answers
    @abc.abstractmethod
    def is_complete(self, answer: dict[str, Any]) -> bool:
        """A complete, successful answer: the only kind that is stored."""

    @abc.abstractmethod
    def calls_tools(self, answer: dict[str, Any]) -> bool:
        """The answer asks the client to run tools: served from the exact tier only."""

    @abc.abstractmethod
    def assembler(self) -> StreamAssembly: ...

    # ------------------------------------------------------------------ hits
    @abc.abstractmethod
    def as_fresh_answer(self, answer: dict[str, Any], request: ParsedRequest) -> dict[str, Any]:
        """A copy of a cached answer presented as an answer to ``request`` (an L3 hit): a new
        id, the request's own model, a current timestamp where the protocol has one."""

    @abc.abstractmethod
    def raw_reason(self, answer: dict[str, Any], request: ParsedRequest) -> HitReason | None:
        """Why this hit must be served raw whatever was asked (JSON output requested, tool
        calls, content that is not plain text), or None."""

    @abc.abstractmethod
    def text_slots(self, answer: dict[str, Any]) -> Iterator[tuple[str, Callable[[str], None]]]:
        """Each prose text of the answer with a setter for it (called only when raw_reason is
        None), for the hit format."""

    @abc.abstractmethod
    def replay(self, answer: dict[str, Any], request: ParsedRequest) -> Iterable[bytes]:
        """The answer as the SSE events the provider sends for a streaming request."""

    @abc.abstractmethod
    def usage_tokens(self, answer: dict[str, Any]) -> int:
        """Input + output tokens the provider billed for the answer (0 when it did not say)."""

    def neutral_form(
        self,
        request: dict[str, Any],
        *,
        canonical: bytes,
        question: str | None,
        context_source: Callable[[], bytes],
        uncacheable_reason: str = "",
    ) -> ParsedRequest:
        """The ParsedRequest of a validated body (``model`` and ``stream`` are read the same
        way in every protocol); ``context_source`` runs only if the semantic tiers need it."""
        return ParsedRequest(
            protocol=self.name,
            body=request,
            model=request["model"],
            stream=request.get("stream") is True,
            canonical=canonical,
            question=question,
            context_source=context_source,
            cacheable=not uncacheable_reason,
            uncacheable_reason=uncacheable_reason,
        )

    def stream_error(self, kind: ErrorKind, message: str) -> bytes:
        """An in-band error event, for a stream whose headers are already sent: the SDKs raise
        on it instead of taking a cut stream for a complete one."""
        body = envelope(kind, message, dialect=self.dialect)
        if self.dialect is ErrorDialect.ANTHROPIC:
            return b"event: error\ndata: " + body + b"\n\n"
        return b"data: " + body + b"\n\n"

    # ------------------------------------------------------------------ mock provider
    @abc.abstractmethod
    def mock_answer(self, request: ParsedRequest, text: str, answer_id: str) -> dict[str, Any]:
        """A deterministic answer whose text is ``text`` (REFLEX_MOCK_PROVIDER=1)."""

    # ------------------------------------------------------------------ headers
    def answer_headers(self, headers: Mapping[str, str]) -> Any:
        """The request headers that change the answer, as a JSON value (e.g. Anthropic's API
        version and beta features), or None when the body alone decides (the default)."""
        return None

    def with_headers(self, parsed: ParsedRequest, headers: Mapping[str, str]) -> ParsedRequest:
        """``parsed`` with ``answer_headers`` folded into its exact key and its context, so two
        requests that differ only in those headers never share an entry. (Canonical JSON has
        no raw newline, so the separator cannot be confused with the body's bytes.)"""
        values = self.answer_headers(headers)
        if values is None:
            return parsed
        suffix = b"\n" + canonical_json(values)
        source = parsed.context_source
        return replace(parsed, canonical=parsed.canonical + suffix,
                       context_source=(lambda: source() + suffix) if source is not None else None)


# ---------------------------------------------------------------------------- shared helpers


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or the 400 that says exactly what is wrong with it."""
    if not body:
        raise GatewayError(ErrorKind.INVALID_JSON, "request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(
            ErrorKind.INVALID_ENCODING, f"request body is not valid UTF-8 (byte offset {exc.start})"
        ) from None
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.INVALID_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise GatewayError(ErrorKind.INVALID_JSON, "request body must be a JSON object")
    return request


def wrong_type(param: str, expected: str) -> GatewayError:
    return GatewayError(ErrorKind.WRONG_TYPE, f"'{param}' must be {expected}", param=param)


def require_model(request: Mapping[str, Any]) -> str:
    if "model" not in request:
        raise GatewayError(ErrorKind.MISSING_FIELD, "missing required parameter 'model'", param="model")
    model = request["model"]
    if not isinstance(model, str) or not model.strip():
        raise wrong_type("model", "a non-empty string")
    return model


def optional_bool(request: Mapping[str, Any], name: str) -> bool:
    # bool is checked strictly: "true" or 1 would be read differently by different providers
    value = request.get(name)
    if value is not None and not isinstance(value, bool):
        raise wrong_type(name, "a boolean")
    return value is True


def without_fields(value: Any, names: frozenset[str]) -> Any:
    """``value`` with every object key in ``names`` removed, at any depth (``cache_control``
    markers sit on system blocks, messages, content blocks and tools alike)."""
    if isinstance(value, dict):
        return {k: without_fields(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [without_fields(v, names) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Sorted-key JSON: key order never splits the cache.

    The JSON parser accepts nesting to depth 1,023 but the serializer stops at 254: a request
    nested deeper than that cannot be keyed, and is refused as the client's error, not a 500.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"request cannot be keyed: {exc}") from None


def context_bytes(protocol: str, remainder: Any) -> bytes:
    """The context of a semantic lookup: the protocol, then everything but the question."""
    return protocol.encode() + b"\n" + canonical_json(remainder)
