"""`reflex verifier`, and the in-process server that `reflex serve` and the tests start."""

from __future__ import annotations

from collections.abc import Callable

from reflex.settings import ModelServiceSettings
from services.model_server.grpc_server import ModelServer, run_model_service_cli, start_model_server
from services.verifier.cross_encoder import CrossEncoderModel, resolve_model_path
from services.verifier.service import VERIFIER_SPEC


async def start_verifier_server(
    settings: ModelServiceSettings,
    port: int = 0,
    *,
    wait_ready: bool = True,
    load_backend: Callable[[ModelServiceSettings], CrossEncoderModel] | None = None,
) -> ModelServer[CrossEncoderModel]:
    """Start the verifier on the running loop (see ``start_model_server``)."""
    return await start_model_server(VERIFIER_SPEC, settings, port, wait_ready=wait_ready, load_backend=load_backend)


def main(argv: list[str], settings: ModelServiceSettings) -> int:
    return run_model_service_cli(
        VERIFIER_SPEC,
        settings,
        argv,
        description="The verifier gRPC service (port REFLEX_GRPC_PORT, default 50052; model REFLEX_RERANKER_PATH).",
        resolve_model_path=resolve_model_path,
    )
