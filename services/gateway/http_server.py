"""The gateway's HTTP server: aiohttp's, with two things aiohttp does not do for us.

1. **Errors before a handler runs** (a bad Content-Length, Content-Length together with
   Transfer-Encoding, an encoding nobody can decode) are answered by aiohttp itself as plain
   text. Clients parse our errors; here they get the same JSON envelope as every other error,
   in the dialect of the path they called.
2. **Header trickling** (slowloris): aiohttp waits for request headers as long as the client
   keeps the socket open. A connection that has not delivered its first request's headers within
   REFLEX_HEADER_READ_TIMEOUT_SECS is closed. (Bodies are bounded separately, by
   REFLEX_BODY_READ_TIMEOUT_SECS, in the handlers; idle keep-alive connections by aiohttp's
   keepalive_timeout.)

Both hook into aiohttp's RequestHandler, the per-connection protocol object; the runner makes
its Server build ours instead.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from services.gateway.errors import ErrorDialect, ErrorKind, envelope

log = logging.getLogger("reflex.gateway")

_KIND_BY_STATUS = {
    HTTPStatus.BAD_REQUEST: ErrorKind.INVALID_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: ErrorKind.BODY_TOO_LARGE,
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: ErrorKind.INVALID_REQUEST,
    HTTPStatus.GATEWAY_TIMEOUT: ErrorKind.UPSTREAM_TIMEOUT,
}


class GatewayRequestHandler(RequestHandler):
    """One connection: aiohttp's protocol, with the envelope and the header deadline."""

    # RequestHandler uses __slots__; so must we, for the one attribute we add.
    __slots__ = ("_header_deadline",)

    @property
    def header_read_timeout(self) -> float:
        return float(getattr(self._manager, "header_read_timeout", 10.0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_deadline = asyncio.get_running_loop().call_later(
            self.header_read_timeout, self._headers_overdue
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._header_deadline.cancel()
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        # _request_count counts the requests whose headers were parsed on this connection
        if self._request_count == 0 and self.transport is not None:
            log.info("closing a connection that sent no complete request headers in %.0f s",
                     self.header_read_timeout)
            self.transport.close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0 or status == HTTPStatus.INTERNAL_SERVER_ERROR:
            # bytes already sent (only the connection can be closed), or a failure of ours:
            # aiohttp's own handling, which logs it
            return super().handle_error(request, status, exc, message)
        kind = _KIND_BY_STATUS.get(HTTPStatus(status), ErrorKind.INVALID_REQUEST)
        detail = getattr(exc, "message", None) or message or HTTPStatus(status).phrase
        text = str(detail).splitlines()[0].strip() or HTTPStatus(status).phrase
        log.debug("malformed request from %s: %s", request.remote, text)
        response = web.Response(
            status=status,
            # aiohttp could not parse the request line either, or it kept only a placeholder:
            # the path is unknown, so the body reads as either protocol's envelope
            body=envelope(kind, f"malformed HTTP request: {text}", dialect=ErrorDialect.EITHER),
            content_type="application/json",
        )
        response.force_close()
        return response


class _GatewayServer(web.Server):
    """aiohttp's Server, building GatewayRequestHandler connections."""

    header_read_timeout: float = 10.0

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed requests in the envelope and close
    when their headers do not arrive in time."""

    def __init__(self, app: web.Application, *, header_read_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_read_timeout = header_read_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app configured aiohttp's Server (handler, request factory, handler arguments);
        # only its connection factory changes, so the class is swapped rather than rebuilt.
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        server.header_read_timeout = self._header_read_timeout
        return server
