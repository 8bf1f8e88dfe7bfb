"""The VerifierService servicer, proto conversion around ``score_candidates`` (which the
in-process client, services/verifier/in_process.py, calls too): all candidates of one Score
call go into the batcher as (query, candidate) pairs (one cross-encoder order, as before), then:

* with a decision model (services/verifier/decision.py, loaded beside the checkpoint and
  checked against it) and the request's cosines: the cross-encoder probabilities go back to
  logits and the decision model answers one calibrated probability per candidate, from the
  logit, the cosine, lexical overlap and the rule flags (a dot product: nothing recomputed);
* without cosines (a client that does not send them), or with no decision model
  (REFLEX_VERIFIER_DECISION=off, or a checkpoint with no decision.json): the cross-encoder's
  own probability, as the previous verifier served. At the calibrated default threshold
  (0.96) that is stricter than the old one (0.92), so a client that sends no cosines gets
  fewer hits, never more wrong ones. No cosine is computed here: the embedder is another
  service, and the gateway has the cosine already.

Then the rules switched on (REFLEX_RULE_*, all off by default; services.verifier.rules) may
lower scores. With a decision model they are already features of it, so a rule switched on
is a hard veto on top of that: it can only lower a score, at the cost of its calibration."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import grpc
import numpy as np

from reflex.verifier.v1 import verifier_pb2, verifier_pb2_grpc
from services.model_server.batching import Timing
from services.model_server.errors import InvalidInput
from services.model_server.grpc_server import ModelServer, ServiceSpec
from services.verifier import rules
from services.verifier.cross_encoder import CrossEncoderModel, load_cross_encoder
from services.verifier.decision import DecisionModel, PreparedPairs, logit_from_probability

GRPC_SERVICE = verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name
DEFAULT_PORT = 50052


async def score_candidates(server: ModelServer[CrossEncoderModel], query: str, candidates: Sequence[str],
                           cosines: Sequence[float], min_score: float) -> tuple[list[float], Timing]:
    """One score in [0, 1] per candidate, in order, and the call's timing (zeros when no candidate
    needed the model); ``cosines`` one per candidate or none. Raises ModelServiceError."""
    if not query.strip():
        raise InvalidInput("query is empty")
    if not candidates:
        raise InvalidInput("candidates is empty")
    candidates, cosines = list(candidates), list(cosines)
    if cosines and len(cosines) != len(candidates):
        raise InvalidInput(f"{len(cosines)} cosines for {len(candidates)} candidates (send one per candidate, or none)")
    if not all(math.isfinite(c) for c in cosines):
        raise InvalidInput("cosines must be finite")
    if not math.isfinite(min_score):
        raise InvalidInput("min_score must be finite")
    settings = server.settings
    # A wrapped backend (tests' GatedBackend) may have no decision attribute: none.
    model = getattr(server.require_backend(), "decision", None)
    prepared = None
    if model is not None and cosines:
        prepared = await _prepare(model, query, candidates, _clamped(cosines))
    scores: list[float | None] = [None] * len(candidates)
    if prepared is not None and min_score > 0:
        # Candidates that cannot reach min_score, whatever the cross-encoder says, keep
        # their upper bound and skip the model (ScoreRequest.min_score). With the shipped
        # decision model that takes a cosine under about 0.45 (below the default L2 floor),
        # so it saves work mostly where the floor is lowered; the bound is arithmetic on
        # the features the decision needs anyway.
        for i, bound in enumerate(prepared.upper_bounds()):
            if bound < min_score:
                scores[i] = float(bound)
    kept = [i for i, s in enumerate(scores) if s is None]
    timing = Timing()
    if kept:
        probs, timing = await server.require_batcher().submit([(query, candidates[i]) for i in kept])
        decided = [float(p) for p in probs]
        if prepared is not None:
            # The decision model's calibrated probabilities from the cross-encoder's (back to
            # logits: the model was fitted on logits): a dot product per pair.
            logits = logit_from_probability(np.asarray(decided, dtype=np.float64)).tolist()
            decided = [float(p) for p in prepared.subset(kept).probabilities(logits)]
        if rules.enabled_rules(settings.rules):
            # Off the event loop: the rules are another team's code and may do real work.
            # rules.apply_rules looked up at call time (tests replace it).
            decided = await asyncio.to_thread(rules.apply_rules, query, [candidates[i] for i in kept], decided,
                                              settings.rules)
        if len(decided) != len(kept):
            raise RuntimeError(f"apply_rules returned {len(decided)} scores for {len(kept)} candidates")
        for i, s in zip(kept, decided, strict=True):
            scores[i] = s
    return [min(1.0, max(0.0, float(s or 0.0))) for s in scores], timing


class VerifierServicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, server: ModelServer[CrossEncoderModel]) -> None:
        self._server = server

    # Failures are raised, never answered here: ErrorMappingInterceptor
    # (services.model_server.interceptors) counts them and picks the gRPC code.
    async def Score(self, request: verifier_pb2.ScoreRequest, context: grpc.aio.ServicerContext
                    ) -> verifier_pb2.ScoreResponse:
        scores, took = await score_candidates(self._server, request.query, request.candidates, request.cosines,
                                              request.min_score)
        return verifier_pb2.ScoreResponse(scores=scores, timing=verifier_pb2.Timing(
            queue_time_ns=took.queue_ns, tokenize_time_ns=took.tokenize_ns, inference_time_ns=took.inference_ns))

    async def Info(self, request: verifier_pb2.InfoRequest, context: grpc.aio.ServicerContext
                   ) -> verifier_pb2.InfoResponse:
        model = self._server.require_backend()
        decision = getattr(model, "decision", None)
        return verifier_pb2.InfoResponse(
            model_name=model.name, max_tokens=model.max_tokens, device=str(model.runtime.device),
            dtype=model.runtime.dtype_name, max_batch_size=self._server.settings.batching.max_batch_size,
            rules=rules.enabled_rules(self._server.settings.rules),
            decision_model=decision.describe() if decision is not None else "",
            decision_threshold=decision.threshold if decision is not None else 0.0,
            decision_margin=decision.margin if decision is not None else 0.0,
        )


# A few short pairs get their decision features on the event loop: a short pair's regexes take
# about 70 us, less than the hop to a worker thread (about 160 us at idle, more under load).
# Longer texts (a question may be 16 KiB) or many candidates go to a thread, so one call never
# holds the loop for long.
_INLINE_FEATURE_CHARS = 2048
_INLINE_FEATURE_PAIRS = 8


async def _prepare(model: DecisionModel, query: str, candidates: list[str], cosines: list[float]) -> PreparedPairs:
    if (len(candidates) <= _INLINE_FEATURE_PAIRS
            and len(query) + sum(len(c) for c in candidates) <= _INLINE_FEATURE_CHARS):
        return model.prepare(query, candidates, cosines)
    return await asyncio.to_thread(model.prepare, query, candidates, cosines)


def _clamped(cosines: list[float]) -> list[float]:
    """Cosines clamped to [-1, 1]: float rounding can put a unit vector's cosine a hair above 1."""
    return [min(1.0, max(-1.0, float(c))) for c in cosines]


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
