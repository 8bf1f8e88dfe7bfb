"""The OpenAPI 3.1 document (services/gateway/openapi.json) against the gateway itself.

1. The document is valid OpenAPI 3.1 (openapi-spec-validator), and it is served at /openapi.json.
2. It documents exactly the routes the app registers: a route added without its documentation,
   or documentation left behind by a removed route, fails here.
3. schemathesis generates requests from it (valid ones and, for the request bodies, invalid ones)
   and sends them to a real gateway on a TCP port: REFLEX_MOCK_PROVIDER=1 answers every protocol
   locally, the semantic tiers are off. Every response must match the document (status, content
   type, headers, body schema) and none may be a 5xx. It runs once against a gateway without an
   admin token (the admin API answers 404) and once with one (the admin calls carry it).

The snapshot operations are not fuzzed: their ``url`` is any local path or a gs:// bucket, and a
generated one would write wherever it points or reach the network. They are checked with
fixed, safe requests below instead.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reflex.settings import GatewaySettings
from services.gateway.app import create_app
from services.gateway.main import GatewayServer
from services.gateway.openapi import OPENAPI_PATH, openapi_document
from tests.support.loop_thread import LoopThread

DOCUMENT: dict[str, Any] = orjson.loads(openapi_document())
ADMIN_TOKEN = "admin-token-for-schemathesis"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# aiohttp's add_route("*", ...) answers any method: documented as these
ANY_METHOD = frozenset({"get", "post", "put", "patch", "delete"})
# Examples per operation and generation mode: the whole module stays well under a minute.
EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


# ---------------------------------------------------------------------------- the document


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)  # raises OpenAPIValidationError, naming the first problem


def registered_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves; HEAD is implied by GET."""
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        path = route.resource.canonical  # "/v1/messages/{tail}" for "/v1/messages/{tail:.+}"
        method = route.method.lower()
        if method == "head":
            continue
        for each in ANY_METHOD if method == "*" else {method}:
            routes.add((each, path))
    return routes


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    app = create_app(GatewaySettings.build(port=0, semantic=False, mock_provider=True))
    registered, documented = registered_routes(app), documented_routes(DOCUMENT)
    assert registered - documented == set(), "routes the app serves that openapi.json does not document"
    assert documented - registered == set(), "operations openapi.json documents that the app does not serve"


def test_the_comparison_sees_a_missing_route() -> None:
    # the check above can fail: take one operation out of a copy of the document
    document = orjson.loads(openapi_document())
    del document["paths"]["/v1/messages"]
    app = create_app(GatewaySettings.build(port=0, semantic=False, mock_provider=True))
    assert registered_routes(app) - documented_routes(document) == {("post", "/v1/messages")}


# ---------------------------------------------------------------------------- a real gateway


@dataclass
class Gateway:
    server: GatewayServer
    admin_token: str | None

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread("openapi-gateways")
    yield thread
    thread.close()


def start(loop: LoopThread, tmp: Path, admin_token: str | None) -> GatewayServer:
    settings = GatewaySettings.build(port=0, semantic=False, mock_provider=True, admin_token=admin_token,
                                     storage_path=tmp, body_read_timeout_secs=5.0)

    async def make() -> GatewayServer:
        server = GatewayServer(settings)
        await server.start()
        return server

    return loop.run(make())


@pytest.fixture(scope="module", params=["no-admin-token", "admin-token"])
def gateway(request: pytest.FixtureRequest, loop: LoopThread,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    token = ADMIN_TOKEN if request.param == "admin-token" else None
    server = start(loop, tmp_path_factory.mktemp("openapi"), token)
    yield Gateway(server, token)
    loop.run(server.stop())


def test_the_document_is_served(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == DOCUMENT


schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/admin/v1/snapshots")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Counter[tuple[str, int]]]:
    """(operation, status) of every call schemathesis made, reported at the end of the module,
    and checked: the fuzzing must have reached the answers, not only the 400s."""
    calls: Counter[tuple[str, int]] = Counter()
    yield calls
    operations = {operation for operation, _ in calls}
    statuses: Counter[int] = Counter()
    for (_, status), n in calls.items():
        statuses[status] += n
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\nschemathesis: {sum(calls.values())} calls over {len(operations)} operations, "
              f"statuses {dict(sorted(statuses.items()))}")
    for route in ("POST /v1/chat/completions", "POST /v1/messages", "POST /v1/responses"):
        if route not in operations:
            continue  # deselected (-k)
        assert calls[(route, 200)] > 0, f"no generated request to {route} was answered"
        assert any(calls[(route, s)] for s in range(400, 500)), f"no generated request to {route} was refused"


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_responses_match_the_document(case: schemathesis.Case, gateway: Gateway,
                                      tally: Counter[tuple[str, int]]) -> None:
    headers: dict[str, str] = {}
    if gateway.admin_token is not None and case.path.startswith("/admin/"):
        headers["Authorization"] = f"Bearer {gateway.admin_token}"
    response = case.call(base_url=gateway.url, headers=headers, timeout=30)
    # the operation, even when schemathesis probes it with a method it does not document (405)
    tally[(f"{case.operation.method.upper()} {case.operation.path}", response.status_code)] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)


# ---------------------------------------------------------------------------- by hand


def operation(path: str, method: str) -> Any:
    return schemathesis.openapi.from_dict(DOCUMENT)[path][method]


def conforms(path: str, method: str, response: httpx.Response) -> None:
    """The response matches the document's operation (status, content type, headers, body)."""
    operation(path, method).validate_response(response)


def test_snapshot_operations_match_the_document(gateway: Gateway, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    path = "/admin/v1/snapshots"
    for response in (
        httpx.post(gateway.url + path, json={"url": str(tmp_path / "snaps")}, headers=auth, timeout=60),
        httpx.get(gateway.url + path, params={"url": str(tmp_path / "snaps")}, headers=auth),
        httpx.get(gateway.url + path, headers=auth),  # no configured location: 409 (or 404 without a token)
        httpx.post(gateway.url + path, content=b"{not json", headers=auth),
        httpx.get(gateway.url + path, headers={"Authorization": "Bearer wrong"}),
    ):
        assert response.status_code < 500, response.text
        conforms(path, response.request.method.lower(), response)
    if gateway.admin_token is not None:
        listed = httpx.get(gateway.url + path, params={"url": str(tmp_path / "snaps")}, headers=auth).json()
        assert len(listed["snapshots"]) == 1


def test_wrong_admin_token_and_errors_of_each_dialect_match_the_document(gateway: Gateway) -> None:
    stats = httpx.get(gateway.url + "/admin/v1/stats", headers={"Authorization": "Bearer wrong"})
    assert stats.status_code == (401 if gateway.admin_token else 404)
    conforms("/admin/v1/stats", "get", stats)
    bad_chat = httpx.post(gateway.url + "/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
    assert bad_chat.status_code == 400 and "error" in bad_chat.json()
    conforms("/v1/chat/completions", "post", bad_chat)
    bad_message = httpx.post(gateway.url + "/v1/messages", json={"model": "m", "messages": []})
    assert bad_message.status_code == 400 and bad_message.json()["type"] == "error"
    conforms("/v1/messages", "post", bad_message)
    # and the validation itself can fail: an OpenAI envelope where Anthropic's is documented
    with pytest.raises(Exception, match="(?i)schema|type|required"):
        conforms("/v1/messages", "post", bad_chat)


def test_the_mock_provider_refuses_too_many_choices_at_once(gateway: Gateway) -> None:
    # found by schemathesis: {"n": 10**12} made the mock provider build a trillion choices on the
    # event loop, and every other request waited. It answers 400, as OpenAI does above 128.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 10**12}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    conforms("/v1/chat/completions", "post", response)
    assert httpx.post(gateway.url + "/v1/chat/completions", json={**body, "n": 3}).status_code == 200
