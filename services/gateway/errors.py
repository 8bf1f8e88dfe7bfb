"""One table from error kinds to HTTP status and OpenAI's error envelope.

Every error the gateway itself produces goes through ``error_response`` so that clients
(the official SDKs in particular) always get ``{"error": {"message", "type", "param",
"code"}}`` with a status they know how to retry or not. Messages are ours and never carry
a traceback or a caller's key. Failures of the semantic tiers (gRPC or Qdrant) never reach
a caller: the cascade turns them into misses (see cascade.py), so they have no row here.
The provider's own errors are passed through untouched, also not through this table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import orjson
from aiohttp import web

log = logging.getLogger("reflex.gateway")


@dataclass(frozen=True, slots=True)
class _Spec:
    status: int
    type: str  # OpenAI's error "type"
    code: str  # OpenAI's error "code" (machine-readable)


class ErrorKind(Enum):
    INVALID_JSON = _Spec(400, "invalid_request_error", "invalid_json")
    INVALID_ENCODING = _Spec(400, "invalid_request_error", "invalid_encoding")
    INVALID_REQUEST = _Spec(400, "invalid_request_error", "invalid_request")
    MISSING_FIELD = _Spec(400, "invalid_request_error", "missing_required_parameter")
    WRONG_TYPE = _Spec(400, "invalid_request_error", "invalid_type")
    UNSUPPORTED_FIELD = _Spec(400, "invalid_request_error", "unsupported_parameter")
    NOT_FOUND = _Spec(404, "invalid_request_error", "not_found")
    METHOD_NOT_ALLOWED = _Spec(405, "invalid_request_error", "method_not_allowed")
    BODY_TOO_LARGE = _Spec(413, "invalid_request_error", "request_too_large")
    OVERLOADED = _Spec(429, "rate_limit_error", "gateway_overloaded")
    UPSTREAM_UNREACHABLE = _Spec(502, "upstream_error", "upstream_unreachable")
    UPSTREAM_TIMEOUT = _Spec(504, "upstream_error", "upstream_timeout")
    INTERNAL = _Spec(500, "server_error", "internal_error")

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


def envelope(kind: ErrorKind, message: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": kind.value.type, "param": param, "code": kind.value.code}}
    )


def error_response(
    kind: ErrorKind, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=kind.status,
        body=envelope(kind, message, param),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Render GatewayError and aiohttp's own HTTP errors in the envelope; never a traceback."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.kind, exc.message, param=exc.param)
    except web.HTTPRequestEntityTooLarge:
        return error_response(ErrorKind.BODY_TOO_LARGE, "request body is larger than the gateway accepts")
    except web.HTTPNotFound:
        # a mistyped base URL should read clearly in an SDK's exception, not as HTML
        return error_response(ErrorKind.NOT_FOUND, f"no route for {request.method} {request.path}")
    except web.HTTPMethodNotAllowed:
        return error_response(ErrorKind.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.path}")
    except web.HTTPException:
        raise
    except Exception:
        # a bug: the traceback goes to our log, the caller gets the envelope, never the trace
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ErrorKind.INTERNAL, "internal error in the Reflex gateway")
