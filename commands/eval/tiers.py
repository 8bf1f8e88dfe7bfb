"""The tiers the harness measures: the same services and store the gateway uses.

* Embedder and verifier: the gRPC services, reached through the gateway's own clients.
  Started in-process on loopback port 0 unless REFLEX_EMBEDDER_URL / REFLEX_VERIFIER_URL
  name running ones, so what is measured is what the gateway would be served.
* L2: always a fresh Qdrant Edge shard in a temporary directory, deleted afterwards. An
  eval stores thousands of entries under a synthetic tenant; they must never land in the
  user's ``.data`` or a shared Qdrant server, nor be polluted by what is already there.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from reflex.settings import EvalSettings
from reflex.tiers import Embedder, L2Store, TierUnavailable, Verifier


@dataclass(slots=True)
class EvalTiers:
    embedder: Embedder
    verifier: Verifier | None
    l2: L2Store | None
    # Info of each model service, for the report and the embedding cache key
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def embedder_identity(self) -> str:
        info = self.models["embedder"]
        return "|".join(str(info.get(k, "")) for k in ("model_name", "dimension", "dtype", "max_tokens"))


async def _info(target: str, service: str) -> dict[str, Any]:
    """The service's Info (model name, dimension, device...), read with the generated stubs."""
    if service == "embedder":
        from reflex.embedder.v1 import embedder_pb2 as pb2
        from reflex.embedder.v1 import embedder_pb2_grpc as pb2_grpc

        stub_class: Any = pb2_grpc.EmbedderServiceStub
    else:
        from reflex.verifier.v1 import verifier_pb2 as pb2  # type: ignore[no-redef]
        from reflex.verifier.v1 import verifier_pb2_grpc as pb2_grpc  # type: ignore[no-redef]

        stub_class = pb2_grpc.VerifierServiceStub
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await stub_class(channel).Info(pb2.InfoRequest(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise TierUnavailable(service, "unavailable", f"Info at {target}: {exc.details()}") from None
    return MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def _service_target(stack: AsyncExitStack, settings: EvalSettings, service: str) -> str:
    """A gRPC target for ``service``: the configured URL, or a server started here."""
    url = settings.clients.embedder_url if service == "embedder" else settings.clients.verifier_url
    if url:
        return url
    if service == "embedder":
        from services.embedder.main import start_embedder_server as start
    else:
        from services.verifier.main import start_verifier_server as start  # type: ignore[no-redef]
    # Loopback and port 0: nothing outside this process can reach the eval's servers, and
    # two evals (or an eval beside `reflex serve`) never fight over a port.
    local = settings.models.replace(grpc_bind_addr="127.0.0.1")
    try:
        server = await start(local, port=0)
    except (OSError, ValueError) as exc:
        # No model on disk (FileNotFoundError), a bad model directory, a port: name the
        # service and the cause instead of a traceback.
        raise TierUnavailable(service, "unavailable", f"cannot start it in-process: {exc}") from exc
    stack.push_async_callback(server.stop, 0)
    return f"127.0.0.1:{server.port}"


@asynccontextmanager
async def open_tiers(
    settings: EvalSettings, *, verifier: bool, l2: bool, call_timeout_secs: float
) -> AsyncIterator[EvalTiers]:
    from services.gateway.model_clients import GrpcEmbedder, GrpcVerifier

    async with AsyncExitStack() as stack:
        target = await _service_target(stack, settings, "embedder")
        embedder_client = GrpcEmbedder(target)
        stack.push_async_callback(embedder_client.close)
        models = {"embedder": await _info(target, "embedder")}

        verifier_client = None
        if verifier:
            target = await _service_target(stack, settings, "verifier")
            verifier_client = GrpcVerifier(target)
            stack.push_async_callback(verifier_client.close)
            models["verifier"] = await _info(target, "verifier")

        store = None
        if l2:
            from services.gateway.l2 import open_l2_store

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reflex-eval-l2-")))
            l2_settings = settings.l2.model_copy(
                update={
                    "qdrant_url": None,
                    "storage_path": tmp,
                    # Bulk writes queue behind each other on the store's one worker thread;
                    # the gateway's per-call deadline is for one request, not a bulk load.
                    "timeout_ms": max(settings.l2.timeout_ms, int(call_timeout_secs * 1000)),
                }
            )
            store = await open_l2_store(l2_settings, int(models["embedder"]["dimension"]))
            stack.push_async_callback(store.close)
        yield EvalTiers(embedder=embedder_client, verifier=verifier_client, l2=store, models=models)
