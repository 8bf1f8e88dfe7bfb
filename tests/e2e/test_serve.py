"""``reflex serve`` as a user runs it: one process with the gateway, the real MiniLM embedder,
the shipped verifier and an embedded Qdrant Edge shard, driven by the official ``openai`` SDK.

The fake upstream is the only fake here. These tests show the product's promise end to end: a
reworded question is served from cache only after the verifier says yes, the seed's traps
are misses, and what was cached survives a restart (L2 is on disk; L1 is in-process), with
the models called in process (the default) and over gRPC.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from reflex.settings import VerifierDecisionSettings
from tests.support.fake_upstream import FakeUpstream
from tests.support.metrics import pending_writes
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"


class ServeProcess:
    def __init__(self, storage: Path, upstream: FakeUpstream, **extra_env: str) -> None:
        self.port = free_port()
        self.log = storage / f"serve-{self.port}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "REFLEX_PORT": str(self.port),
            "REFLEX_UPSTREAM_URL": upstream.url,
            "REFLEX_STORAGE_PATH": str(storage / "data"),
            # an ONNX cache of its own, as on a new machine: both models export on the first
            # start (on two threads of the one process), and a restart reads them back
            "REFLEX_MODEL_CACHE_PATH": str(storage / "models"),
            "REFLEX_RESPONSE_FORMAT": "raw",
            "REFLEX_SHUTDOWN_GRACE_SECS": "5",
            # a loaded CI machine must not turn a slow model call into a miss
            "REFLEX_EMBEDDER_TIMEOUT_MS": "20000",
            "REFLEX_VERIFIER_TIMEOUT_MS": "20000",
            **extra_env,
        }
        for name in ("REFLEX_RERANKER_PATH", "REFLEX_MODEL_PATH", "REFLEX_REDIS_URL", "REFLEX_QDRANT_URL",
                     "REFLEX_EMBEDDER_URL", "REFLEX_VERIFIER_URL", "REFLEX_RERANKER_THRESHOLD"):
            env.pop(name, None)
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['serve']))"],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "reflex serve did not become ready:\n" + self.log.read_text()
            time.sleep(0.25)
        self.client = openai.OpenAI(base_url=f"{self.base}/v1", api_key="sk-e2e-tenant", max_retries=0)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ask(self, question: str) -> tuple[str, dict[str, str], str]:
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": question}]
        )
        completion = raw.parse()
        return raw.headers["x-reflex-status"], dict(raw.headers), completion.choices[0].message.content or ""

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            return self.process.wait(60)
        finally:
            self._log_file.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def serve(storage: Path, upstream: FakeUpstream) -> Iterator[ServeProcess]:
    process = ServeProcess(storage, upstream)
    yield process
    if process.process.poll() is None:
        process.stop()


def wait_for_write(serve: ServeProcess, question: str) -> None:
    """Cache writes happen after the response is sent: an exact repeat tells us L1 has it, and no
    write left pending that L2 has it too (its write waits for the question's embedding, which a
    lookup in an empty scope did not wait for)."""
    deadline = time.monotonic() + 30
    while serve.ask(question)[0] != "hit-l1-exact" or pending_writes(serve.base):
        assert time.monotonic() < deadline, f"{question!r} was never cached"
        time.sleep(0.2)


def test_paraphrase_is_a_verified_hit(serve: ServeProcess, upstream: FakeUpstream) -> None:
    status, _, first = serve.ask("How do I center a div in CSS?")
    assert status == "miss"
    wait_for_write(serve, "How do I center a div in CSS?")
    calls = upstream.chat_count

    # (The issue's own example, "What's the CSS to center a div horizontally and vertically?",
    # scores 0.83 with the shipped verifier, below its 0.92 threshold: a miss, which is safe.
    # tests/verifier_model keeps it as a strict xfail until a better model lands.)
    status, headers, answer = serve.ask("How can I center a div using CSS?")
    assert status == "hit-l3-verified", headers
    assert answer == first  # raw format: the cached answer byte for byte
    assert float(headers["x-reflex-verifier-score"]) >= VerifierDecisionSettings.model_fields["threshold"].default
    assert 0.0 < float(headers["x-reflex-similarity"]) <= 1.0
    assert upstream.chat_count == calls  # answered from cache: no upstream call


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("How to sort ascending?", "How to sort descending?"),
        ("Python quicksort", "Rust quicksort"),
        ("How do I enable 2FA?", "How do I disable 2FA?"),
    ],
)
def test_seed_traps_are_misses(serve: ServeProcess, upstream: FakeUpstream, cached: str, asked: str) -> None:
    assert serve.ask(cached)[0] == "miss"
    wait_for_write(serve, cached)
    calls = upstream.chat_count
    status, headers, answer = serve.ask(asked)
    assert status == "miss", headers
    assert upstream.chat_count == calls + 1
    assert asked in upstream.chat_calls[-1].body["messages"][-1]["content"]


def test_l2_survives_a_restart_and_ctrl_c_is_clean(
    serve: ServeProcess, storage: Path, upstream: FakeUpstream
) -> None:
    question = "How can I undo the last git commit but keep my changes?"
    assert serve.ask(question)[0] == "miss"
    wait_for_write(serve, question)
    assert serve.stop() == 0

    assert "calls the embedder and verifier in process" in serve.log.read_text()

    # Restarted with the models called over loopback gRPC, as a cluster's gateway calls them
    # (REFLEX_SERVE_MODEL_CALLS=grpc): the same store, the same verified hit.
    restarted = ServeProcess(storage, upstream, REFLEX_SERVE_MODEL_CALLS="grpc")
    try:
        # L1 was in-process and is gone; the same wording now comes back through L2 + L3.
        status, headers, _ = restarted.ask(question)
        assert status == "hit-l3-verified", headers
    finally:
        assert restarted.stop() == 0
    assert "calls the embedder and verifier over gRPC" in restarted.log.read_text()


@pytest.mark.slow
def test_l2_survives_kill_9(storage: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of the whole process (no drain, no clean close of the shard): every answer L2 had
    stored is served after a restart, the same answer byte for byte (issue "Reliability")."""
    monkeypatch.setenv("REFLEX_ADMIN_TOKEN", "e2e-admin")  # only to see that L2 has every entry
    folder = storage / "kill-9"
    folder.mkdir()
    questions = ["How do I reverse a list in Python?", "What is the difference between TCP and UDP?",
                 "How do I center a div in CSS?"]
    first = ServeProcess(folder, upstream)
    try:
        answers = {}
        for question in questions:
            status, _, answers[question] = first.ask(question)
            assert status == "miss"
        deadline = time.monotonic() + 30
        while True:
            tenants = httpx.get(f"{first.base}/admin/v1/stats", headers={"Authorization": "Bearer e2e-admin"}).json()
            if sum(t["entries"]["l2"] for t in tenants["tenants"].values()) == len(questions):
                break
            assert time.monotonic() < deadline, tenants
            time.sleep(0.2)
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(30) == -signal.SIGKILL
    finally:
        if first.process.poll() is None:
            first.process.kill()
        first._log_file.close()

    restarted = ServeProcess(folder, upstream)
    try:
        for question in questions:
            status, headers, answer = restarted.ask(question)  # L1 died with the process: from L2
            assert status == "hit-l3-verified", headers
            assert answer == answers[question]
    finally:
        assert restarted.stop() == 0
