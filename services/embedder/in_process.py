"""The gateway's ``Embedder`` for an embedder running in its own process (``reflex serve``):
straight into the server's batcher, no gRPC (services/model_server/in_process.py says why)."""

from __future__ import annotations

from collections.abc import Sequence

from services.embedder.model import EmbeddingModel
from services.embedder.service import embed_texts
from services.model_server.in_process import InProcessModelClient


class InProcessEmbedder(InProcessModelClient[EmbeddingModel]):
    component = "embedder"
    method = "Embed"

    async def embed(self, texts: Sequence[str], *, timeout: float) -> list[list[float]]:
        vectors, timing = await self._call(lambda: embed_texts(self._server, texts), timeout)
        self._report(timing)
        return [v.tolist() for v in vectors]
