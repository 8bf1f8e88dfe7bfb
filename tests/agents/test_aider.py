"""Aider, the real CLI (aider-chat from PyPI, installed by `make aider` into .aider-venv), against
`reflex serve` (a real process: the gateway, MiniLM, the shipped verifier, embedded L2) whose
upstream is the fake provider.

Aider sends its edit-format rules in one of two shapes, and both are covered:
- a model it knows (``gpt-4o``): the rules come as a ``system`` message after the user's words,
  which the chat adapter counts as context;
- a model it does not know: the rules are appended to the user message itself (they also close
  its system prompt), which ``asked_part`` recognises as text the request repeats.

Each run starts from a fresh copy of one small git repository, so "the edit applied" is read
from the file a cached answer changed, never from an earlier run's work. The fake upstream
answers a SEARCH/REPLACE prompt with an edit block that writes its call number into the file:
a cached run shows the number of the call whose answer it replays.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.protocols.openai_chat import semantic_question
from tests.support.fake_upstream import FakeUpstream, aider_edit_block
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
AIDER = ROOT / ".aider-venv" / "bin" / "aider"
KEY = "sk-aider-tenant"
HELLO = 'def greet(name):\n    return "Hello " + name\n'

pytestmark = pytest.mark.slow  # a `reflex serve` start and eight Aider runs: ~40 s of CPU, 1-2 min


@dataclass(frozen=True)
class Shape:
    model: str  # as Aider gets it, after "openai/"
    asked: str
    reworded: str  # accepted by the shipped verifier (0.99 / 0.98), measured before it was chosen
    other: str  # a different request about the same code: must be a miss


KNOWN = Shape("gpt-4o", "Add a docstring to greet", "Please add a docstring to greet", "Delete the greet function")
UNKNOWN = Shape("reflex-test-model", "Rename greet to welcome", "Please rename greet to welcome",
                "Rename greet to farewell")


class Serve:
    """`reflex serve` with the default hit format (auto) and the fake upstream."""

    def __init__(self, storage: Path, upstream: FakeUpstream) -> None:
        self.port = free_port()
        self.log = storage / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "REFLEX_PORT": str(self.port), "REFLEX_UPSTREAM_URL": upstream.url,
               "REFLEX_STORAGE_PATH": str(storage / "data"), "REFLEX_SHUTDOWN_GRACE_SECS": "5",
               # a loaded CI machine must not turn a slow model call into a miss
               "REFLEX_EMBEDDER_TIMEOUT_MS": "20000", "REFLEX_VERIFIER_TIMEOUT_MS": "20000"}
        for name in [n for n in env if n.startswith("REFLEX_") and n not in (
                "REFLEX_PORT", "REFLEX_UPSTREAM_URL", "REFLEX_STORAGE_PATH", "REFLEX_SHUTDOWN_GRACE_SECS",
                "REFLEX_EMBEDDER_TIMEOUT_MS", "REFLEX_VERIFIER_TIMEOUT_MS")]:
            env.pop(name)  # the shipped defaults (format auto included), whatever the shell has set
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
class Run:
    status: str  # X-Reflex-Status of the run's one chat request ("miss": it went upstream)
    hit: tuple[tuple[str, str], ...] | None  # the hits counter's labels (status, format, reason) on a hit
    stdout: str
    file: str  # hello.py after the run


@dataclass
class Aider:
    serve: Serve
    upstream: FakeUpstream
    scratch: Path
    repo: Path  # the pristine repository every run copies
    runs: int = 0

    def run(self, model: str, prompt: str) -> Run:
        self.runs += 1
        work = self.scratch / f"run-{self.runs}"
        shutil.copytree(self.repo, work / "repo")
        (work / "home").mkdir()
        env = {
            "PATH": os.environ["PATH"], "HOME": str(work / "home"), "TERM": "dumb",
            # no network: anything Aider tries outside loopback fails at once on a closed port
            "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}", "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
            "NO_PROXY": "127.0.0.1,localhost",
            **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
               for what, value in (("NAME", "test"), ("EMAIL", "test@example.invalid"))},
        }
        before, calls = self.serve.counters(), self.upstream.chat_count
        done = subprocess.run(
            [str(AIDER), "--model", f"openai/{model}", "--openai-api-base", f"{self.serve.base}/v1",
             "--openai-api-key", KEY, "--edit-format", "diff", "--yes-always", "--no-auto-commits",
             "--no-check-update", "--no-analytics", "--no-show-model-warnings", "--no-gitignore", "--no-pretty",
             "--no-fancy-input", "--no-show-release-notes", "--message", prompt, "hello.py"],
            cwd=work / "repo", env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
            check=False,  # a failure is asserted below, with its output
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # What the cache did, from the gateway's metrics: a hit is counted before its first
        # byte. (reflex_gateway_requests_total cannot tell: Aider hangs up on [DONE], which
        # cancels a streamed request's handler before it is counted.)
        after = self.serve.counters()
        hits = [labels for (name, labels), n in after.items()
                if name == "reflex_gateway_hits_total" and n != before.get((name, labels), 0.0)]
        upstream_calls = self.upstream.chat_count - calls
        assert len(hits) + upstream_calls == 1, (hits, upstream_calls, done.stdout + done.stderr)
        status = dict(hits[0])["status"] if hits else "miss"
        return Run(status, hits[0] if hits else None, done.stdout, (work / "repo" / "hello.py").read_text())

    def wait_for_writes(self, l1: float, l2: float) -> None:
        """Cache writes happen after the answer is sent: wait until this miss's landed."""
        deadline = time.monotonic() + 30
        while self.serve.writes_ok("l1") < l1 + 1 or self.serve.writes_ok("l2") < l2 + 1:
            assert time.monotonic() < deadline, "a miss was never written to L1 and L2:\n" + self.serve.log.read_text()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def aider(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Aider]:
    if not AIDER.exists():
        pytest.fail(f"{AIDER} is missing: run `make aider` (make test does)")
    scratch = tmp_path_factory.mktemp("aider")
    repo = scratch / "pristine"
    repo.mkdir()
    (repo / "hello.py").write_text(HELLO)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for args in (["init", "-q"], ["add", "hello.py"], ["commit", "-q", "-m", "hello"]):
        subprocess.run([*git, *args], cwd=repo, check=True)
    serve = Serve(scratch, upstream)
    try:
        yield Aider(serve, upstream, scratch, repo)
    finally:
        serve.stop()


def edited(number: int) -> str:
    """hello.py after the fake upstream's edit from call ``number``."""
    return f"# Answer #{number}\n" + HELLO


@pytest.mark.parametrize("shape", [KNOWN, UNKNOWN], ids=["known-model", "unknown-model"])
def test_repeat_rewording_and_cached_edit(aider: Aider, upstream: FakeUpstream, shape: Shape) -> None:
    l1, l2 = aider.serve.writes_ok("l1"), aider.serve.writes_ok("l2")
    first = aider.run(shape.model, shape.asked)
    assert first.status == "miss"
    call = upstream.chat_calls[-1]
    assert first.file == edited(call.number)  # the fresh answer's edit applied
    aider.wait_for_writes(l1, l2)

    # Aider's own shape for this model, as it was sent, and the question Reflex found in it
    messages = call.body["messages"]
    if shape is KNOWN:
        assert messages[-1]["role"] == "system" and "SEARCH/REPLACE" in messages[-1]["content"]
        assert messages[-2] == {"role": "user", "content": shape.asked}
    else:
        assert messages[-1]["role"] == "user" and messages[-1]["content"].startswith(shape.asked + "\n\n# *SEARCH")
        assert len(messages[-1]["content"]) > 2000  # the question is mostly the rules
    assert semantic_question(call.body) == shape.asked

    calls = upstream.chat_count
    repeat = aider.run(shape.model, shape.asked)
    assert repeat.status == "hit-l1-exact"
    # auto (the default) served the edit block as cached, no Tauq envelope around it
    assert repeat.hit == (("format", "raw"), ("reason", "auto_raw"), ("status", "hit-l1-exact"))
    answer = aider_edit_block(call.number, call.body)
    assert answer is not None and answer.strip() in repeat.stdout and "semantic_request" not in repeat.stdout
    assert repeat.file == edited(call.number)  # the cached edit block still applies
    # Aider's own request body again, with the openai SDK (Aider's client): the served
    # content is the provider's text byte for byte, streamed (as Aider asks) or not.
    client = openai.OpenAI(base_url=f"{aider.serve.base}/v1", api_key=KEY, max_retries=0)
    for stream in (True, False):
        raw = client.chat.completions.with_raw_response.create(**{**call.body, "stream": stream})
        assert raw.headers["x-reflex-status"] == "hit-l1-exact"
        if stream:
            content = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        else:
            content = raw.parse().choices[0].message.content
        assert content == answer

    reworded = aider.run(shape.model, shape.reworded)
    assert reworded.status == "hit-l3-verified", aider.serve.log.read_text()[-3000:]
    assert reworded.hit is not None and ("format", "raw") in reworded.hit
    assert reworded.file == edited(call.number)
    assert upstream.chat_count == calls  # both answered from cache

    other = aider.run(shape.model, shape.other)
    assert other.status == "miss"
    assert upstream.chat_count == calls + 1
    assert other.file == edited(upstream.chat_calls[-1].number)

