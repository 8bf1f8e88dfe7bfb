"""One table from error kinds to HTTP status and each protocol's error envelope.

Every error the gateway itself produces goes through ``error_response`` so that clients
(the official SDKs in particular) always get their own protocol's envelope with a status they
know how to retry or not: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` for
Chat Completions and Responses, Anthropic's ``{"type": "error", "error": {"type",
"message"}}`` for Messages. Messages are ours and never carry
a traceback or a caller's key. Failures of the semantic tiers (gRPC or Qdrant) never reach
a caller: the cascade turns them into misses (see cascade.py), so they have no row here.
The provider's own errors are passed through untouched, also not through this table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum, StrEnum

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

log = logging.getLogger("reflex.gateway")

# Set on a request whose body read was cut off by REFLEX_BODY_READ_TIMEOUT_SECS (handlers).
BODY_READ_TIMED_OUT = web.RequestKey("body_read_timed_out", bool)


class ErrorDialect(StrEnum):
    """Which envelope a client reads: chosen by the protocol of the path it called."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    # The request was too malformed to have a path: one body that reads as both envelopes
    # (Anthropic's {"type": "error", "error": {"type", "message"}} plus OpenAI's param/code).
    EITHER = "either"


@dataclass(frozen=True, slots=True)
class _Spec:
    status: int
    type: str  # OpenAI's error "type"
    code: str  # OpenAI's error "code" (machine-readable)
    anthropic_type: str  # Anthropic's error "type" for the same status


class ErrorKind(Enum):
    INVALID_JSON = _Spec(400, "invalid_request_error", "invalid_json", "invalid_request_error")
    INVALID_ENCODING = _Spec(400, "invalid_request_error", "invalid_encoding", "invalid_request_error")
    INVALID_REQUEST = _Spec(400, "invalid_request_error", "invalid_request", "invalid_request_error")
    MISSING_FIELD = _Spec(400, "invalid_request_error", "missing_required_parameter", "invalid_request_error")
    WRONG_TYPE = _Spec(400, "invalid_request_error", "invalid_type", "invalid_request_error")
    UNSUPPORTED_FIELD = _Spec(400, "invalid_request_error", "unsupported_parameter", "invalid_request_error")
    UNAUTHORIZED = _Spec(401, "invalid_request_error", "invalid_api_key", "authentication_error")
    REQUEST_TIMEOUT = _Spec(408, "invalid_request_error", "request_timeout", "invalid_request_error")
    NOT_FOUND = _Spec(404, "invalid_request_error", "not_found", "not_found_error")
    METHOD_NOT_ALLOWED = _Spec(405, "invalid_request_error", "method_not_allowed", "invalid_request_error")
    BODY_TOO_LARGE = _Spec(413, "invalid_request_error", "request_too_large", "request_too_large")
    OVERLOADED = _Spec(429, "rate_limit_error", "gateway_overloaded", "rate_limit_error")
    UPSTREAM_UNREACHABLE = _Spec(502, "upstream_error", "upstream_unreachable", "api_error")
    UPSTREAM_TIMEOUT = _Spec(504, "upstream_error", "upstream_timeout", "timeout_error")
    INTERNAL = _Spec(500, "server_error", "internal_error", "api_error")

    @property
    def status(self) -> int:
        return self.value.status


class GatewayError(Exception):
    """Raised anywhere below a handler; the error middleware renders it."""

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


def envelope(
    kind: ErrorKind, message: str, param: str | None = None, dialect: ErrorDialect = ErrorDialect.OPENAI
) -> bytes:
    if dialect is ErrorDialect.ANTHROPIC:
        return orjson.dumps({"type": "error", "error": {"type": kind.value.anthropic_type, "message": message}})
    if dialect is ErrorDialect.EITHER:
        return orjson.dumps({"type": "error", "error": {"message": message, "type": kind.value.type, "param": param,
                                                         "code": kind.value.code}})
    return orjson.dumps(
        {"error": {"message": message, "type": kind.value.type, "param": param, "code": kind.value.code}}
    )


def dialect_of(path: str) -> ErrorDialect:
    """The envelope a caller of ``path`` reads: Anthropic's under /v1/messages, else OpenAI's."""
    return ErrorDialect.ANTHROPIC if path == "/v1/messages" or path.startswith("/v1/messages/") else ErrorDialect.OPENAI


def error_response(
    kind: ErrorKind,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    dialect: ErrorDialect = ErrorDialect.OPENAI,
) -> web.Response:
    return web.Response(
        status=kind.status,
        body=envelope(kind, message, param, dialect),
        content_type="application/json",
        headers=headers,
    )


def render_error(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
    """The envelope for an exception a handler raised (GatewayError, aiohttp's HTTP errors, a
    body that cannot be read, a bug); never a traceback. Re-raises what is not an error of the
    request (other HTTP exceptions, a timeout that was not the body read's) for aiohttp.
    Called by the gateway's middleware (middleware.py)."""
    dialect = dialect_of(request.path)
    if isinstance(exc, GatewayError):
        return error_response(exc.kind, exc.message, param=exc.param, dialect=dialect)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(ErrorKind.BODY_TOO_LARGE, "request body is larger than the gateway accepts", dialect=dialect)
    if isinstance(exc, (BadHttpMessage, web.RequestPayloadError)):
        # e.g. Content-Encoding: gzip on a body that is not gzip: the caller's mistake, a 400
        cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
        detail = getattr(cause, "message", "") or type(cause).__name__
        return error_response(ErrorKind.INVALID_ENCODING, f"request body cannot be read: {detail}", dialect=dialect)
    if isinstance(exc, TimeoutError):
        if request.get(BODY_READ_TIMED_OUT):
            return error_response(ErrorKind.REQUEST_TIMEOUT, "the request body did not arrive in time", dialect=dialect)
        raise exc
    if isinstance(exc, web.HTTPNotFound):
        # a mistyped base URL should read clearly in an SDK's exception, not as HTML
        return error_response(ErrorKind.NOT_FOUND, f"no route for {request.method} {request.path}", dialect=dialect)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return error_response(
            ErrorKind.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.path}", dialect=dialect
        )
    if isinstance(exc, web.HTTPException):
        raise exc
    # a bug: the traceback goes to our log, the caller gets the envelope, never the trace
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(ErrorKind.INTERNAL, "internal error in the Reflex gateway", dialect=dialect)
