"""`reflex embedder`, and the in-process server that `reflex serve` and the tests start."""

from __future__ import annotations

from collections.abc import Callable

from reflex.settings import ModelServiceSettings
from services.embedder.model import EmbeddingModel, resolve_model_path
from services.embedder.service import EMBEDDER_SPEC
from services.model_server.grpc_server import ModelServer, run_model_service_cli, start_model_server


async def start_embedder_server(
    settings: ModelServiceSettings,
    port: int = 0,
    *,
    wait_ready: bool = True,
    load_backend: Callable[[ModelServiceSettings], EmbeddingModel] | None = None,
) -> ModelServer[EmbeddingModel]:
    """Start the embedder on the running loop (see ``start_model_server``)."""
    return await start_model_server(EMBEDDER_SPEC, settings, port, wait_ready=wait_ready, load_backend=load_backend)


def main(argv: list[str], settings: ModelServiceSettings) -> int:
    return run_model_service_cli(
        EMBEDDER_SPEC,
        settings,
        argv,
        description="The embedder gRPC service (port REFLEX_GRPC_PORT, default 50051; model REFLEX_MODEL_PATH).",
        resolve_model_path=resolve_model_path,
    )
