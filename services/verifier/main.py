"""`reflex verifier`, and the in-process server that `reflex serve` and the tests start."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable

from reflex.config import Settings
from services.common.grpc_server import ModelServer, run_until_signalled
from services.verifier.cross_encoder import CrossEncoderModel, resolve_model_path
from services.verifier.service import VERIFIER_SPEC

log = logging.getLogger("reflex.verifier")


async def start_verifier_server(
    settings: Settings,
    port: int = 0,
    *,
    wait_ready: bool = True,
    load_backend: Callable[[Settings], CrossEncoderModel] | None = None,
) -> ModelServer[CrossEncoderModel]:
    """Start the verifier on the running loop; the handle has ``.port`` and ``.stop(grace)``.

    ``wait_ready=False`` returns as soon as the port is bound (health NOT_SERVING while the
    model loads); ``load_backend`` replaces the model loader (e.g. to share one loaded model
    between replicas in a test).
    """
    server = ModelServer(VERIFIER_SPEC, settings, load_backend=load_backend)
    await server.start(port)
    if wait_ready:
        try:
            await server.wait_ready()
        except BaseException:
            await server.stop(grace=0)
            raise
    return server


def main(argv: list[str], settings: Settings) -> int:
    argparse.ArgumentParser(
        prog="reflex verifier",
        description="The verifier gRPC service (port REFLEX_GRPC_PORT, default 50052; model REFLEX_RERANKER_PATH).",
    ).parse_args(argv)
    settings.log_effective()
    try:
        resolve_model_path(settings)  # a missing model is a one-line error, before any port is bound
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return asyncio.run(run_until_signalled(VERIFIER_SPEC, settings))
