"""Codex CLI, the real one (@openai/codex from the npm registry, pinned, installed by `make agents`
into .agents/), against `reflex serve` (a real process: the gateway, MiniLM, the shipped
verifier, embedded L2) whose upstream is the fake provider.

Codex speaks only the Responses API. It is pointed at Reflex the way a user would, with a
provider in ``~/.codex/config.toml`` (HOME is a scratch folder; the scratch project is
trusted), and run as ``codex exec "<prompt>"`` from a scratch git repository. Everything outside
loopback goes to a closed local port (HTTPS_PROXY), so its telemetry and update checks fail at
once. Every run is a new Codex session: new item ids, ``prompt_cache_key`` and
``client_metadata``, the values the exact key must leave out for a repeat to be a hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CODEX = ROOT / ".agents" / "node_modules" / ".bin" / "codex"
KEY = "sk-test"
RESPONSES = "/v1/responses"

pytestmark = pytest.mark.slow  # a `reflex serve` start plus a few CLI runs


class CodexServe:
    """`reflex serve` with the shipped defaults (hit format auto) and the fake upstream."""

    def __init__(self, storage: Path, upstream: FakeUpstream) -> None:
        self.port = free_port()
        self.log = storage / "serve.log"
        kept = {"REFLEX_PORT": str(self.port), "REFLEX_UPSTREAM_URL": upstream.url,
                "REFLEX_STORAGE_PATH": str(storage / "data"), "REFLEX_SHUTDOWN_GRACE_SECS": "5",
                # a loaded CI machine must not turn a slow model call into a miss
                "REFLEX_EMBEDDER_TIMEOUT_MS": "20000", "REFLEX_VERIFIER_TIMEOUT_MS": "20000"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}  # the shipped defaults
        env.update(kept, PYTHONPATH=str(ROOT))
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

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counters(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def writes_ok(self, tier: str) -> float:
        return self.counters().get(("reflex_gateway_cache_writes_total", (("result", "ok"), ("tier", tier))), 0.0)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        finally:
            self._log_file.close()


@dataclass(frozen=True)
class CodexRun:
    # X-Reflex-Status of each Responses request the run made, from the gateway's request counter.
    # (A relayed miss is not counted there yet: Codex hangs up as soon as it reads
    # response.completed, which cancels the handler before the counting middleware sees its
    # response. Misses are told by the fake provider's call count and the cache writes instead.)
    statuses: list[str]
    stdout: str  # what `codex exec` printed: its final message
    upstream_calls: int  # /v1/responses calls the fake provider got during the run


@dataclass
class Codex:
    serve: CodexServe
    upstream: FakeUpstream
    home: Path
    project: Path

    def exec(self, prompt: str) -> CodexRun:
        env = {
            "PATH": os.environ["PATH"], "HOME": str(self.home), "OPENAI_API_KEY": KEY, "TERM": "dumb",
            # no network: anything Codex tries outside loopback fails at once on a closed port
            "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}", "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }
        before, calls = self.serve.counters(), len(self.upstream.calls_to(RESPONSES))
        done = subprocess.run([str(CODEX), "exec", prompt], cwd=self.project, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr + self.serve.log.read_text()[-3000:]
        after = self.serve.counters()
        statuses = [dict(labels)["status"] for (name, labels), value in after.items()
                    if name == "reflex_gateway_requests_total"
                    for _ in range(int(value - before.get((name, labels), 0.0)))]
        return CodexRun(statuses, done.stdout, len(self.upstream.calls_to(RESPONSES)) - calls)

    def wait_for_writes(self, l1: float, l2: float) -> None:
        """Cache writes happen after the answer is sent: wait until this miss's landed."""
        deadline = time.monotonic() + 30
        while self.serve.writes_ok("l1") < l1 + 1 or self.serve.writes_ok("l2") < l2 + 1:
            assert time.monotonic() < deadline, "a miss was never written to L1 and L2:\n" + self.serve.log.read_text()
            time.sleep(0.1)


def codex_config(base_url: str, project: Path) -> str:
    """~/.codex/config.toml: Reflex as a Responses provider (as in the README), the project trusted."""
    return f'''model = "gpt-5-codex"
model_provider = "local"

[model_providers.local]
name = "Reflex"
base_url = "{base_url}"
env_key = "OPENAI_API_KEY"
wire_api = "responses"

[projects."{project}"]
trust_level = "trusted"
'''


@pytest.fixture(scope="module")
def codex_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory, codex_upstream: FakeUpstream) -> Iterator[Codex]:
    if not CODEX.exists():
        pytest.fail(f"{CODEX} is missing: run `make agents` (make test does)")
    scratch = tmp_path_factory.mktemp("codex")
    project, home = scratch / "project", scratch / "home"
    project.mkdir()
    (home / ".codex").mkdir(parents=True)
    (project / "index.html").write_text('<div class="box">centre me</div>\n')
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for args in (["init", "-q"], ["add", "index.html"], ["commit", "-q", "-m", "page"]):
        subprocess.run([*git, *args], cwd=project, check=True)
    serve = CodexServe(scratch, codex_upstream)
    (home / ".codex" / "config.toml").write_text(codex_config(f"{serve.base}/v1", project))
    try:
        yield Codex(serve, codex_upstream, home, project)
    finally:
        serve.stop()


def test_a_repeated_codex_exec_is_an_exact_hit(codex: Codex) -> None:
    prompt = "How do I center a div in CSS?"
    l1, l2 = codex.serve.writes_ok("l1"), codex.serve.writes_ok("l2")
    first = codex.exec(prompt)
    assert first.upstream_calls == 1 and not any(s.startswith("hit") for s in first.statuses)
    number = codex.upstream.calls_to(RESPONSES)[-1].number
    assert f"Answer #{number} to: {prompt}" in first.stdout
    body = codex.upstream.calls_to(RESPONSES)[-1].body
    assert body["store"] is False and body["stream"] is True  # what makes Codex cacheable
    codex.wait_for_writes(l1, l2)

    second = codex.exec(prompt)
    assert second.statuses == ["hit-l1-exact"]
    assert second.upstream_calls == 0  # the fake provider was called once for both runs
    assert second.stdout == first.stdout  # the CLI printed the cached answer, as it was


def test_a_reworded_codex_prompt_is_a_verified_hit(codex: Codex) -> None:
    # A rewording the shipped verifier accepts (0.98 through the decision model at 0.96).
    asked = "How can I undo the last git commit but keep my changes?"
    reworded = "How do I undo the last git commit but keep my changes?"
    l1, l2 = codex.serve.writes_ok("l1"), codex.serve.writes_ok("l2")
    first = codex.exec(asked)
    assert first.upstream_calls == 1 and not any(s.startswith("hit") for s in first.statuses)
    codex.wait_for_writes(l1, l2)
    second = codex.exec(reworded)
    assert second.statuses == ["hit-l3-verified"] and second.upstream_calls == 0
    assert second.stdout == first.stdout  # prose is served raw (format auto): no envelope


def test_a_different_codex_prompt_is_a_miss(codex: Codex) -> None:
    l1, l2 = codex.serve.writes_ok("l1"), codex.serve.writes_ok("l2")
    assert codex.exec("How do I enable 2FA?").upstream_calls == 1
    codex.wait_for_writes(l1, l2)
    run = codex.exec("How do I disable 2FA?")
    assert run.upstream_calls == 1 and not any(s.startswith("hit") for s in run.statuses)
    assert "How do I disable 2FA?" in run.stdout
