"""The VerifierService servicer: all candidates of one Score call go into the batcher as
(query, candidate) pairs, then the verifier's rules (services.verifier.rules) may lower scores."""

from __future__ import annotations

import asyncio

import grpc

from reflex.verifier.v1 import verifier_pb2, verifier_pb2_grpc
from services.model_server.errors import InvalidInput
from services.model_server.grpc_server import ModelServer, ServiceSpec
from services.verifier import rules
from services.verifier.cross_encoder import CrossEncoderModel, load_cross_encoder

GRPC_SERVICE = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name
DEFAULT_PORT = 50052


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, server: ModelServer[CrossEncoderModel]) -> None:
        self._server = server

    # Failures are raised, never answered here: ErrorMappingInterceptor
    # (services.model_server.interceptors) counts them and picks the gRPC code.
    async def Score(self, request: verifier_pb2.ScoreRequest, context: grpc.aio.ServicerContext
                    ) -> verifier_pb2.ScoreResponse:
        if not request.query.strip():
            raise InvalidInput("query is empty")
        if not request.candidates:
            raise InvalidInput("candidates is empty")
        query, candidates = request.query, list(request.candidates)
        probs, timing = await self._server.require_batcher().submit([(query, c) for c in candidates])
        settings = self._server.settings
        # Off the event loop: the rules are another team's code and may do real work.
        ruled = await asyncio.to_thread(rules.apply_rules, query, candidates, [float(p) for p in probs], settings.rules)
        if len(ruled) != len(candidates):
            raise RuntimeError(f"apply_rules returned {len(ruled)} scores for {len(candidates)} candidates")
        return verifier_pb2.ScoreResponse(
            scores=[min(1.0, max(0.0, float(s))) for s in ruled],
            timing=verifier_pb2.Timing(queue_time_ns=timing.queue_ns, tokenize_time_ns=timing.tokenize_ns,
                                       inference_time_ns=timing.inference_ns),
        )

    async def Info(self, request: verifier_pb2.InfoRequest, context: grpc.aio.ServicerContext
                   ) -> verifier_pb2.InfoResponse:
        model = self._server.require_backend()
        return verifier_pb2.InfoResponse(
            model_name=model.name, max_tokens=model.max_tokens, device=str(model.runtime.device),
            dtype=model.runtime.dtype_name, max_batch_size=self._server.settings.batching.max_batch_size,
            rules=rules.enabled_rules(self._server.settings.rules),
        )


def _register(server: grpc.aio.Server, model_server: ModelServer[CrossEncoderModel]) -> None:
    verifier_pb2_grpc.add_VerifierServiceServicer_to_server(VerifierServicer(model_server), server)


VERIFIER_SPEC: ServiceSpec[CrossEncoderModel] = ServiceSpec(
    name="verifier",
    grpc_service=GRPC_SERVICE,
    default_port=DEFAULT_PORT,
    register=_register,
    load_backend=load_cross_encoder,
    warmup_items=(("warm-up", "warm-up"), ("How does Reflex warm up?", "It scores one small batch first.")),
)
