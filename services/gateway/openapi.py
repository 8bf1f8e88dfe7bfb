"""``GET /openapi.json``: the gateway's OpenAPI 3.1 document (``openapi.json`` beside this module).

The document is kept in the repository, written by hand from what the handlers and each
protocol adapter's ``parse`` validate, and held to the routes by tests/reliability/test_openapi.py
(every registered route is documented and every documented one is registered; schemathesis
checks the real gateway's responses against it). It is read once, when the app is built, and
served as the bytes on disk: it never depends on a request or on the settings.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

OPENAPI_PATH = "/openapi.json"


def openapi_document() -> bytes:
    """The document's bytes, as shipped (package data of ``services.gateway``)."""
    return resources.files("services.gateway").joinpath("openapi.json").read_bytes()


def add_openapi_route(app: web.Application) -> None:
    document = openapi_document()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get(OPENAPI_PATH, serve)
