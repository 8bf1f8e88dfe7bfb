"""The gateway's ``Verifier`` for a verifier running in its own process (``reflex serve``):
the servicer's own scoring, no gRPC (services/model_server/in_process.py says why)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.model_server.in_process import InProcessModelClient
from services.verifier.cross_encoder import CrossEncoderModel
from services.verifier.service import score_candidates


class InProcessVerifier(InProcessModelClient[CrossEncoderModel]):
    component = "verifier"
    method = "Score"

    async def score(
        self, query: str, candidates: Sequence[str], cosines: Sequence[float] | None = None, *, timeout: float,
        min_score: float = 0.0,
    ) -> list[float]:
        if cosines is not None and len(cosines) != len(candidates):
            raise ValueError(f"{len(cosines)} cosines for {len(candidates)} candidates")  # as the gRPC client
        scores, timing = await self._call(
            lambda: score_candidates(self._server, query, candidates, cosines or (), min_score), timeout)
        self._report(timing)
        # float32, as the proto's scores are: the same question gets the same decision at the
        # threshold whether the gateway calls the verifier in process or over gRPC
        return np.asarray(scores, dtype=np.float32).tolist()
