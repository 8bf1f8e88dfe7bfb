"""The model services' errors, and the one table that maps them to gRPC status codes.

Every failure a servicer can report is one of these classes; the servicer never picks a
status code itself. That keeps the codes the gateway sees (and turns into HTTP 400 / 429 /
503 / 500) consistent between the embedder and the verifier, and gives each failure a short,
low-cardinality ``reason`` for the ``reflex_<svc>_failures_total`` metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc


class ModelServiceError(Exception):
    """Base class: a failure with a metric reason and a gRPC status (from STATUS_BY_ERROR)."""

    reason = "internal"


class InvalidInput(ModelServiceError):
    """The request cannot be served as sent: no texts, an empty query, too many texts."""

    reason = "invalid_input"


class Overloaded(ModelServiceError):
    """The bounded queue is full. Failing fast lets the caller fall back instead of queueing."""

    reason = "overloaded"


class NotServing(ModelServiceError):
    """The model is still loading / warming up, or the server is shutting down."""

    reason = "not_serving"


class InferenceFailed(ModelServiceError):
    """Tokenizer or forward pass raised; every request in that batch gets this."""

    reason = "inference"


# The one table. Anything not listed (a bug) is INTERNAL.
STATUS_BY_ERROR: Mapping[type[ModelServiceError], grpc.StatusCode] = MappingProxyType({
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotServing: grpc.StatusCode.UNAVAILABLE,
    InferenceFailed: grpc.StatusCode.INTERNAL,
})


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def reason_for(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, ModelServiceError) else "internal"
