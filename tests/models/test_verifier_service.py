"""Layer 2: the verifier gRPC service in-process on port 0, with a real cross-encoder
(a small one built from the MiniLM weights; the trained verifier has tests of its own)."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reflex.settings import ModelSettings
from reflex.verifier.v1 import verifier_pb2, verifier_pb2_grpc
from services.gateway.model_clients import GrpcVerifier
from reflex.tiers import TierUnavailable
from services.verifier import decision, rules
from services.verifier.cross_encoder import default_model_path, resolve_model_path
from tests.support.loop_thread import LoopThread
from tests.support.models import RunningServer, build_tiny_cross_encoder, model_settings, run_verifier

QUERY = "How do I center a div in CSS?"
CANDIDATES = [
    "What's the CSS to center a div horizontally and vertically?",
    "How do I center a div in CSS?",
    "What is the capital of France?",
    "How do I left-align a div in CSS?",
    "",
]


def reference_probabilities(model_dir: Path, query: str, candidates: list[str]) -> list[float]:
    """The same cross-encoder run directly with transformers, one pair at a time."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for c in candidates:
            logits = model(**tokenizer(query, c, truncation=True, max_length=256, return_tensors="pt")).logits[0]
            out.append(float(torch.sigmoid(logits[0]) if logits.numel() == 1 else torch.softmax(logits, -1)[1]))
    return out


@pytest.fixture(scope="module")
def tiny_verifier(model_loop: LoopThread, tiny_cross_encoder_dir: Path) -> Iterator[RunningServer]:
    running = run_verifier(model_loop, model_settings(reranker_path=tiny_cross_encoder_dir))
    yield running
    running.stop()


@pytest.fixture
async def client(tiny_verifier: RunningServer) -> AsyncIterator[GrpcVerifier]:
    c = GrpcVerifier(tiny_verifier.target)
    yield c
    await c.close()


async def test_scores_are_probabilities_in_candidate_order(client: GrpcVerifier, tiny_cross_encoder_dir: Path) -> None:
    scores = await client.score(QUERY, CANDIDATES, timeout=60)
    assert len(scores) == len(CANDIDATES)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 4) for s in scores}) > 1  # the order check below means something
    one_by_one = [(await client.score(QUERY, [c], timeout=60))[0] for c in CANDIDATES]
    assert scores == pytest.approx(one_by_one, abs=1e-5)
    assert scores == pytest.approx(reference_probabilities(tiny_cross_encoder_dir, QUERY, CANDIDATES), abs=1e-4)


async def test_two_label_heads_use_softmax_of_the_positive_class(model_loop: LoopThread, tmp_path: Path) -> None:
    model_dir = build_tiny_cross_encoder(tmp_path / "two-labels", num_labels=2, seed=1)
    running = run_verifier(model_loop, model_settings(reranker_path=model_dir))
    c = GrpcVerifier(running.target)
    try:
        scores = await c.score(QUERY, CANDIDATES[:3], timeout=60)
    finally:
        await c.close()
        running.stop()
    assert scores == pytest.approx(reference_probabilities(model_dir, QUERY, CANDIDATES[:3]), abs=1e-4)


async def test_info_reports_model_and_enabled_rules(tiny_verifier: RunningServer) -> None:
    async with grpc.aio.insecure_channel(tiny_verifier.target) as channel:
        info = await verifier_pb2_grpc.VerifierServiceStub(channel).Info(verifier_pb2.InfoRequest(), timeout=10)
    assert list(info.rules) == rules.enabled_rules(tiny_verifier.server.settings.rules)
    assert info.model_name == tiny_verifier.server.backend.name
    assert info.max_tokens == 256 and info.device == "cpu"


@pytest.mark.parametrize(("query", "candidates"), [("", ["a"]), ("   ", ["a"]), ("q", [])])
async def test_bad_requests_are_invalid_argument(tiny_verifier: RunningServer, query: str,
                                                 candidates: list[str]) -> None:
    async with grpc.aio.insecure_channel(tiny_verifier.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await verifier_pb2_grpc.VerifierServiceStub(channel).Score(
                verifier_pb2.ScoreRequest(query=query, candidates=candidates), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bug_is_internal_with_a_generic_message_and_a_logged_traceback(
    tiny_verifier: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A rule that drops a score: the servicer raises RuntimeError, which no error class covers.
    # (Rules run only when one is switched on, so one is, as far as the servicer can tell.)
    monkeypatch.setattr(rules, "apply_rules", lambda query, candidates, scores, settings: scores[:-1])
    monkeypatch.setattr(rules, "enabled_rules", lambda settings: ["numbers"])
    labels = {"reason": "internal"}
    failures_before = tiny_verifier.metric("reflex_verifier_failures_total", labels)
    calls_before = tiny_verifier.metric("reflex_verifier_requests_total", {"method": "Score"})
    caplog.set_level("ERROR", logger="reflex.grpc")
    async with grpc.aio.insecure_channel(tiny_verifier.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await verifier_pb2_grpc.VerifierServiceStub(channel).Score(
                verifier_pb2.ScoreRequest(query=QUERY, candidates=CANDIDATES[:2]), timeout=30
            )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error (RuntimeError)"  # no internals in the reply
    assert tiny_verifier.metric("reflex_verifier_failures_total", labels) == failures_before + 1
    assert tiny_verifier.metric("reflex_verifier_requests_total", {"method": "Score"}) == calls_before + 1
    logged = [r for r in caplog.records if r.name == "reflex.grpc" and r.getMessage() == "verifier.Score failed"]
    assert logged and logged[0].exc_info is not None
    assert "apply_rules returned 1 scores for 2 candidates" in str(logged[0].exc_info[1])


def test_missing_model_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="REFLEX_RERANKER_PATH"):
        resolve_model_path(ModelSettings(verifier_path=tmp_path / "nowhere"))
    if not (default_model_path() / "config.json").is_file():
        with pytest.raises(FileNotFoundError, match="reflex train-verifier"):
            resolve_model_path(ModelSettings(verifier_path=None))


async def test_verifier_down_is_tier_unavailable(tiny_verifier: RunningServer) -> None:
    # A port nothing listens on: fail fast, not hang.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    c = GrpcVerifier(f"127.0.0.1:{free_port}")
    try:
        with pytest.raises(TierUnavailable) as err:
            await c.score(QUERY, CANDIDATES, timeout=5)
        assert err.value.reason == "unavailable" and err.value.component == "verifier"
        with pytest.raises(TierUnavailable):
            await c.check()
    finally:
        await c.close()


# ---------------------------------------------------------------------- the decision model
def _decision_artifact(sha: str) -> dict:
    """The shipped decision.json, re-keyed to another checkpoint (its weights fit any MiniLM-
    style cross-encoder's logit scale well enough for plumbing)."""
    artifact = json.loads((default_model_path() / "decision.json").read_text())
    artifact["meta"] = {**artifact["meta"], "cross_encoder_sha": sha}
    return artifact


@pytest.fixture(scope="module")
def tiny_with_decision(tmp_path_factory: pytest.TempPathFactory, tiny_cross_encoder_dir: Path) -> Path:
    """The tiny checkpoint with a decision.json fitted (by its checksum) for it."""
    model_dir = tmp_path_factory.mktemp("tiny-with-decision")
    shutil.copytree(tiny_cross_encoder_dir, model_dir, dirs_exist_ok=True)
    (model_dir / "decision.json").write_text(json.dumps(_decision_artifact(decision.checkpoint_sha(model_dir))))
    return model_dir


def test_a_decision_model_for_another_checkpoint_is_refused(model_loop: LoopThread, tmp_path: Path,
                                                            tiny_cross_encoder_dir: Path) -> None:
    model_dir = tmp_path / "mismatch"
    shutil.copytree(tiny_cross_encoder_dir, model_dir)
    (model_dir / "decision.json").write_text(json.dumps(_decision_artifact("0123456789abcdef")))
    with pytest.raises(decision.DecisionModelMismatch, match="fitted for cross-encoder 0123456789abcdef"):
        run_verifier(model_loop, model_settings(reranker_path=model_dir))
    # The same through an explicit path (REFLEX_VERIFIER_DECISION=<file>).
    with pytest.raises(decision.DecisionModelMismatch, match="REFLEX_VERIFIER_DECISION=off"):
        run_verifier(model_loop, model_settings(reranker_path=tiny_cross_encoder_dir,
                                                verifier_decision=str(model_dir / "decision.json")))


async def test_the_decision_model_answers_score_when_cosines_come(model_loop: LoopThread,
                                                                  tiny_with_decision: Path) -> None:
    running = run_verifier(model_loop, model_settings(reranker_path=tiny_with_decision))
    c = GrpcVerifier(running.target)
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            info = await verifier_pb2_grpc.VerifierServiceStub(channel).Info(verifier_pb2.InfoRequest(), timeout=10)
        assert decision.checkpoint_sha(tiny_with_decision) in info.decision_model
        assert info.decision_threshold == pytest.approx(0.96) and info.decision_margin == 0.0
        candidates = [CANDIDATES[i] for i in (0, 2, 3)]  # not the exact repeat (which scores 1)
        plain = await c.score(QUERY, candidates, timeout=60)
        # No cosines: the cross-encoder's own probability, as before.
        assert plain == pytest.approx(reference_probabilities(tiny_with_decision, QUERY, candidates), abs=1e-4)
        low = await c.score(QUERY, candidates, [0.55] * 3, timeout=60)
        high = await c.score(QUERY, candidates, [0.99] * 3, timeout=60)
        # The decision model's calibrated probability, computed from the same cross-encoder
        # probabilities (one forward order) and the cosines; a higher cosine raises every score.
        model = decision.DecisionModel.load(tiny_with_decision / "decision.json")
        expected = model.score(QUERY, candidates, decision.logit_from_probability(plain).tolist(), [0.99] * 3)
        assert high == pytest.approx(expected.tolist(), abs=1e-4)
        assert all(h > lo for h, lo in zip(high, low, strict=True))
        assert high != pytest.approx(plain, abs=1e-3)
        # Half a set of cosines is a client bug, not "unknown".
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with grpc.aio.insecure_channel(running.target) as channel:
                await verifier_pb2_grpc.VerifierServiceStub(channel).Score(
                    verifier_pb2.ScoreRequest(query=QUERY, candidates=candidates, cosines=[0.9]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await c.close()
        running.stop()


async def test_no_decision_model_when_switched_off_or_absent(model_loop: LoopThread, tiny_with_decision: Path,
                                                             tiny_verifier: RunningServer) -> None:
    off = run_verifier(model_loop, model_settings(reranker_path=tiny_with_decision, verifier_decision="off"))
    try:
        for running in (off, tiny_verifier):  # switched off; a checkpoint with no decision.json
            assert running.server.backend.decision is None
            async with grpc.aio.insecure_channel(running.target) as channel:
                stub = verifier_pb2_grpc.VerifierServiceStub(channel)
                info = await stub.Info(verifier_pb2.InfoRequest(), timeout=10)
                assert info.decision_model == "" and info.decision_threshold == 0.0
                with_cosines = await stub.Score(
                    verifier_pb2.ScoreRequest(query=QUERY, candidates=CANDIDATES[:2], cosines=[0.99, 0.99]), timeout=30)
                without = await stub.Score(verifier_pb2.ScoreRequest(query=QUERY, candidates=CANDIDATES[:2]), timeout=30)
            assert list(with_cosines.scores) == pytest.approx(list(without.scores), abs=1e-6)
    finally:
        off.stop()


async def test_candidates_that_cannot_reach_min_score_skip_the_model(model_loop: LoopThread,
                                                                     tiny_with_decision: Path) -> None:
    """ScoreRequest.min_score: a candidate whose upper bound (its cheap features, with the
    cross-encoder's logit at its clip) is below it gets that bound, and never reaches the
    model; the others get exactly the scores they get without min_score."""
    running = run_verifier(model_loop, model_settings(reranker_path=tiny_with_decision))
    c = GrpcVerifier(running.target)
    batcher = running.server.require_batcher()
    sent: list[int] = []
    submit = batcher.submit

    async def counting(items):  # type: ignore[no-untyped-def]
        sent.append(len(items))
        return await submit(items)

    batcher.submit = counting  # type: ignore[method-assign]
    try:
        candidates = [CANDIDATES[i] for i in (0, 2, 3)]
        cosines = [0.99, 0.05, 0.99]  # the middle one is far: no logit can lift it to 0.96
        model = decision.DecisionModel.load(tiny_with_decision / "decision.json")
        bounds = model.upper_bounds(QUERY, candidates, cosines)
        assert bounds[1] < 0.96 <= min(bounds[0], bounds[2])
        full = await c.score(QUERY, candidates, cosines, timeout=60)
        pruned = await c.score(QUERY, candidates, cosines, timeout=60, min_score=0.96)
        assert sent == [3, 2]  # the far candidate never reached the model
        assert [pruned[0], pruned[2]] == pytest.approx([full[0], full[2]], abs=1e-6)
        assert pruned[1] == pytest.approx(float(bounds[1]), abs=1e-6)
        assert full[1] <= pruned[1] < 0.96
        # Nothing can reach it: no model call at all, every score its bound.
        none = await c.score(QUERY, candidates, [0.05] * 3, timeout=60, min_score=0.96)
        assert sent == [3, 2] and max(none) < 0.96
        # min_score without cosines (no decision features) scores everything.
        await c.score(QUERY, candidates, timeout=60, min_score=0.96)
        assert sent == [3, 2, 3]
    finally:
        batcher.submit = submit  # type: ignore[method-assign]
        await c.close()
        running.stop()


def test_upper_bounds_hold_for_every_logit() -> None:
    model = decision.DecisionModel.load(default_model_path() / "decision.json")
    query, candidates = "How do I sort a list in Python?", ["How do I sort a list in Rust?", "Sort a Python list",
                                                           "How do I  sort a list\tin Python? "]
    cosines = [0.7, 0.4, 0.99]
    bounds = model.upper_bounds(query, candidates, cosines)
    for logit in np.linspace(-2 * decision.LOGIT_CLIP, 2 * decision.LOGIT_CLIP, 41):
        scores = model.score(query, candidates, [float(logit)] * 3, cosines)
        assert np.all(scores <= bounds + 1e-12)
    assert bounds[2] == 1.0  # the same text up to whitespace


def test_the_decision_model_fitted_for_the_backend_is_preferred(tmp_path: Path, tiny_cross_encoder_dir: Path) -> None:
    model_dir = tmp_path / "with-int8"
    shutil.copytree(tiny_cross_encoder_dir, model_dir)
    artifact = _decision_artifact(decision.checkpoint_sha(model_dir))
    (model_dir / "decision.json").write_text(json.dumps(artifact))
    (model_dir / "decision.onnx-int8.json").write_text(json.dumps({**artifact, "threshold": 0.9}))
    assert decision.resolve(model_dir, "auto", backend="onnx-int8")[0].threshold == 0.9
    for backend in ("torch", "onnx", "torch-int8"):  # fp32 scores, or no artifact of its own: decision.json
        assert decision.resolve(model_dir, "auto", backend=backend)[0].threshold == pytest.approx(0.96)
