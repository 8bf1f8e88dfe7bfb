"""Shared fixtures for the tests that run real coding-agent CLIs (and real SDKs) against
``reflex serve``: nothing here knows which agent runs.

- ``ServeProcess``: ``reflex serve`` as a user starts it (a real process: the gateway, MiniLM,
  the shipped verifier, an embedded L2 shard), with the shipped defaults (any REFLEX_* of the
  shell dropped, the hit format ``auto`` included) and every upstream at the fake provider:
  REFLEX_UPSTREAM_URL (Chat Completions, Responses) and REFLEX_ANTHROPIC_UPSTREAM_URL
  (Messages). It reads the gateway's Prometheus counters, which is how a test tells what the
  cache did for a CLI that never shows response headers.
- ``fake_provider``: the fake upstream, one per test module, in this process (its call log is
  how a test tells that the provider was, or was not, called).
- ``serve_with_fake_upstream``: one ``reflex serve`` per test module (the models load once).
- ``scratch_repo``: a fresh git repository with one commit, the directory an agent runs in.
- ``scratch_home``: an empty HOME, so no user configuration or credential is read.
- ``offline_env``: the proxy variables that send anything outside loopback to a closed local
  port (telemetry, update checks), so runs complete without a network and fail fast.
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
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_upstream import FakeUpstream
from tests.support.metrics import pending_writes
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
AGENT_BIN = ROOT / ".agents" / "node_modules" / ".bin"
Counters = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class ServeProcess:
    """``reflex serve`` with the shipped defaults, its upstreams at ``upstream``."""

    def __init__(self, storage: Path, upstream: FakeUpstream, **env: str) -> None:
        self.port = free_port()
        storage.mkdir(parents=True, exist_ok=True)
        self.log = storage / f"serve-{self.port}.log"
        settings = {
            "REFLEX_PORT": str(self.port),
            "REFLEX_UPSTREAM_URL": upstream.url,
            "REFLEX_ANTHROPIC_UPSTREAM_URL": upstream.base_url,
            "REFLEX_STORAGE_PATH": str(storage / "data"),
            "REFLEX_SHUTDOWN_GRACE_SECS": "5",
            # a loaded CI machine must not turn a slow model call into a miss
            "REFLEX_EMBEDDER_TIMEOUT_MS": "20000",
            "REFLEX_VERIFIER_TIMEOUT_MS": "20000",
            **env,
        }
        environment = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
        environment.update(settings, PYTHONPATH=str(ROOT))
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['serve']))"],
            cwd=ROOT, env=environment, stdout=self._log_file, stderr=subprocess.STDOUT,
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

    @property
    def base(self) -> str:
        """The gateway's root (ANTHROPIC_BASE_URL); OpenAI-style clients add /v1."""
        return f"http://127.0.0.1:{self.port}"

    def counters(self) -> Counters:
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    @staticmethod
    def total(counters: Counters, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, found), v in counters.items() if n == name and wanted <= set(found))

    def hits(self, counters: Counters | None = None) -> dict[str, float]:
        """Hits served so far, by X-Reflex-Status (counted before the answer is written, so a
        client that hangs up at the end event is still counted)."""
        counters = self.counters() if counters is None else counters
        return {status: self.total(counters, "reflex_gateway_hits_total", status=status)
                for status in ("hit-l1-exact", "hit-l3-verified")}

    def writes(self, tier: str, counters: Counters | None = None) -> float:
        counters = self.counters() if counters is None else counters
        return self.total(counters, "reflex_gateway_cache_writes_total", tier=tier, result="ok")

    def wait_for_writes(self, tier: str, at_least: float, timeout: float = 30.0) -> None:
        """Cache writes happen after the answer was sent: wait until ``at_least`` have landed."""
        deadline = time.monotonic() + timeout
        while self.writes(tier) < at_least:
            assert time.monotonic() < deadline, f"no {tier} write landed:\n" + self.log.read_text()[-3000:]
            time.sleep(0.1)

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Until every cache write spawned so far has finished, L2's included."""
        deadline = time.monotonic() + timeout
        while pending_writes(self.base):
            assert time.monotonic() < deadline, "cache writes still pending:\n" + self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            return self.process.wait(60)
        finally:
            self._log_file.close()


def require_agent(name: str) -> Path:
    """The CLI's binary in .agents/, or a skip that says how to install it."""
    binary = AGENT_BIN / name
    if not binary.is_file():
        pytest.skip(f"{binary} is missing: run `make agents` (installs the pinned coding-agent CLIs from npm)")
    return binary


@pytest.fixture(scope="module")
def fake_provider() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve_with_fake_upstream(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeUpstream
) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path_factory.mktemp("serve"), fake_provider)
    yield process
    if process.process.poll() is None:
        assert process.stop() == 0, process.log.read_text()[-3000:]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=Reflex Tests", "-c", "user.email=tests@reflex.invalid",
                    *args], check=True, capture_output=True)


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """A small git repository with one commit and a clean work tree."""
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    (repo / "README.md").write_text("# Scratch project\n\nA page with a box to centre.\n")
    (repo / "style.css").write_text(".box {\n  width: 10rem;\n}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Initial commit")
    return repo


@pytest.fixture
def scratch_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def offline_env() -> dict[str, str]:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused at once
    return {"HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
