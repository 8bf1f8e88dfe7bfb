"""The EmbedderService servicer: proto conversion around ``embed_texts``, which the in-process
client (services/embedder/in_process.py) calls too."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from reflex.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.embedder.model import EmbeddingModel, load_embedding_model
from services.model_server.batching import Timing
from services.model_server.errors import InvalidInput
from services.model_server.grpc_server import ModelServer, ServiceSpec

GRPC_SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name
DEFAULT_PORT = 50051


async def embed_texts(server: ModelServer[EmbeddingModel], texts: Sequence[str]) -> tuple[list[np.ndarray], Timing]:
    """One unit vector per text, in order, and the call's timing. Raises ModelServiceError."""
    if not texts:
        raise InvalidInput("texts is empty")
    return await server.require_batcher().submit(list(texts))


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, server: ModelServer[EmbeddingModel]) -> None:
        self._server = server

    # Failures are raised, never answered here: ErrorMappingInterceptor
    # (services.model_server.interceptors) counts them and picks the gRPC code.
    async def Embed(self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
                    ) -> embedder_pb2.EmbedResponse:
        vectors, timing = await embed_texts(self._server, request.texts)
        return embedder_pb2.EmbedResponse(
            vectors=[embedder_pb2.Vector(values=v.tolist()) for v in vectors],
            timing=embedder_pb2.Timing(queue_time_ns=timing.queue_ns, tokenize_time_ns=timing.tokenize_ns,
                                       inference_time_ns=timing.inference_ns),
        )

    async def Info(self, request: embedder_pb2.InfoRequest, context: grpc.aio.ServicerContext
                   ) -> embedder_pb2.InfoResponse:
        model = self._server.require_backend()
        return embedder_pb2.InfoResponse(
            model_name=model.name, dimension=model.dimension, max_tokens=model.max_tokens,
            device=str(model.runtime.device), dtype=model.runtime.dtype_name,
            max_batch_size=self._server.settings.batching.max_batch_size,
        )


def _register(server: grpc.aio.Server, model_server: ModelServer[EmbeddingModel]) -> None:
    embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(EmbedderServicer(model_server), server)


EMBEDDER_SPEC: ServiceSpec[EmbeddingModel] = ServiceSpec(
    name="embedder",
    grpc_service=GRPC_SERVICE,
    default_port=DEFAULT_PORT,
    register=_register,
    load_backend=load_embedding_model,
    # Short and long rows, so the warm-up touches the padding path the real traffic takes.
    warmup_items=("warm-up", "Reflex warms the embedder with one small batch before it reports SERVING."),
)
