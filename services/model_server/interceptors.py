"""The one place where a model service's failures become gRPC status codes.

Servicers raise (a ``ModelServiceError`` subclass for failures they expect, anything else for
bugs) and never pick a code. ``ErrorMappingInterceptor`` wraps each of the service's unary
methods once per call: it counts the RPC in ``reflex_<svc>_requests_total``, and on failure
counts it in ``reflex_<svc>_failures_total`` and aborts with the code from the error table
(services.model_server.errors). A bug becomes INTERNAL with a generic message: the traceback
goes to our log, not to the caller.

Only the model service's own methods are wrapped. ``grpc.health.v1`` (and anything else on the
server) passes through untouched: its Check answers NOT_FOUND for an unknown service by
aborting, which wrapping would turn into INTERNAL, and probes must not count as RPCs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.model_server.errors import ModelServiceError, reason_for, status_for
from services.model_server.metrics import ModelMetrics

log = logging.getLogger("reflex.grpc")

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, name: str, grpc_service: str, metrics: ModelMetrics) -> None:
        self._name = name  # "embedder" / "verifier", for log lines
        self._prefix = f"/{grpc_service}/"  # method paths are "/<package>.<Service>/<Method>"
        self._metrics = metrics
        # The wrapped handler of each method, built on its first call: continuation answers the
        # same handler every time, and building a wrapper per call cost about 10% of a small
        # RPC's round trip.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not path.startswith(self._prefix):
            return handler  # unknown method (gRPC answers UNIMPLEMENTED), health, reflection
        if handler.request_streaming or handler.response_streaming:
            # The model services' protos have unary methods only; a streaming one added later
            # needs a wrapper of its own (an async generator), so it is left as it is.
            return handler
        method = path[len(self._prefix):]
        wrapped = self._wrapped[path] = grpc.unary_unary_rpc_method_handler(
            self._guard(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped

    def _guard(self, method: str, behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._metrics.requests.labels(method).inc()
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise  # the servicer aborted with a code of its own choosing: already answered
            except ModelServiceError as exc:
                self._metrics.failures.labels(reason_for(exc)).inc()
                code, message = status_for(exc), str(exc)
            except Exception as exc:  # a bug: INTERNAL, with the traceback in our log, not in the reply
                log.exception("%s.%s failed", self._name, method)
                self._metrics.failures.labels(reason_for(exc)).inc()
                code, message = status_for(exc), f"internal error ({type(exc).__name__})"
            # Outside the except blocks, so the abort is not chained to the servicer's exception.
            await context.abort(code, message)
            raise AssertionError("context.abort returned")  # abort always raises

        return guarded
