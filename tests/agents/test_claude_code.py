"""Claude Code, the real CLI (@anthropic-ai/claude-code from the npm registry, pinned, installed
by `make agents` into .agents/), against `reflex serve` (a real process: the gateway, MiniLM,
the shipped verifier, embedded L2) whose Anthropic upstream is the fake provider.

It is pointed at Reflex the way a user would: ``ANTHROPIC_BASE_URL`` at the gateway and a key in
``ANTHROPIC_API_KEY`` (or ``ANTHROPIC_AUTH_TOKEN``), run as ``claude -p "<prompt>"`` from a
scratch git repository with a scratch HOME, with telemetry and non-essential traffic off and
anything outside loopback sent to a closed local port. Every run is a new Claude Code session:
a new session id in ``metadata.user_id``, the value the exact key must leave out for a repeat
to be a hit. What the cache did is read from the gateway's counters (the CLI shows no response
headers) and from the fake provider's call log.

What the CLI needs, measured with 2.1.197: in ``-p`` mode with a key in the environment, no
``~/.claude.json`` at all; the one written here (onboarding done, the key's last 20 characters
approved) is what AGENTS.md describes and what keeps an interactive session from asking.
Within one HOME and one repository two runs of a prompt send the same body but for the
session id (the memory directory named in the system prompt lies under HOME).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.gateway.protocols.anthropic_messages import AnthropicMessages
from tests.agents.conftest import ServeProcess, require_agent
from tests.support.fake_upstream import FakeUpstream

KEY = "sk-ant-test"
MESSAGES = "/v1/messages"
PROMPT = "How do I center a div in CSS?"
# Chosen by scoring with the shipped verifier first (query = the new prompt, candidate = the
# cached one; threshold 0.92): the rewording scores 0.99, the trap 0.35.
REWORDED = "How can I center a div using CSS?"
TRAP = "How do I center a div in HTML?"

pytestmark = pytest.mark.slow  # a `reflex serve` start plus a few CLI runs


@dataclass(frozen=True)
class ClaudeRun:
    stdout: str  # what `claude -p` printed: the answer's text
    upstream_calls: int  # /v1/messages calls the fake provider got during the run
    hits: dict[str, float]  # hits the gateway served during the run, by X-Reflex-Status
    bodies: list[dict[str, Any]]  # the bodies the provider got during the run


@dataclass
class ClaudeCode:
    binary: Path
    serve: ServeProcess
    upstream: FakeUpstream
    home: Path
    project: Path
    offline: dict[str, str]

    def __post_init__(self) -> None:
        config = {"hasCompletedOnboarding": True, "customApiKeyResponses": {"approved": [KEY[-20:]], "rejected": []}}
        (self.home / ".claude.json").write_text(json.dumps(config))

    def run(self, prompt: str, *, key: str = KEY, bearer: bool = False) -> ClaudeRun:
        env = {
            "PATH": os.environ["PATH"], "HOME": str(self.home), "TERM": "dumb",
            "ANTHROPIC_BASE_URL": self.serve.base,
            # ANTHROPIC_AUTH_TOKEN makes the CLI send Authorization: Bearer instead of x-api-key
            ("ANTHROPIC_AUTH_TOKEN" if bearer else "ANTHROPIC_API_KEY"): key,
            "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            **self.offline,
        }
        before, calls = self.serve.counters(), len(self.upstream.calls_to(MESSAGES))
        writes = {tier: self.serve.writes(tier, before) for tier in ("l1", "l2")}
        done = subprocess.run([str(self.binary), "-p", prompt], cwd=self.project, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr + self.serve.log.read_text()[-3000:]
        recorded = self.upstream.calls_to(MESSAGES)[calls:]
        if recorded:
            # a miss's answer is written after it was sent, to L1 and (a text answer to a
            # question) to L2: wait for both before the next run
            for tier, count in writes.items():
                self.serve.wait_for_writes(tier, count + len(recorded))
        before_hits, after_hits = self.serve.hits(before), self.serve.hits()
        return ClaudeRun(
            stdout=done.stdout.strip(),
            upstream_calls=len(recorded),
            hits={status: after_hits[status] - before_hits[status] for status in after_hits},
            bodies=[c.body for c in recorded if c.body is not None],
        )


@pytest.fixture
def claude(serve_with_fake_upstream: ServeProcess, fake_provider: FakeUpstream, scratch_home: Path,
           scratch_repo: Path, offline_env: dict[str, str]) -> ClaudeCode:
    binary = require_agent("claude")
    return ClaudeCode(binary, serve_with_fake_upstream, fake_provider, scratch_home, scratch_repo, offline_env)


NO_HITS = {"hit-l1-exact": 0.0, "hit-l3-verified": 0.0}


def test_the_same_prompt_twice_is_an_exact_hit(claude: ClaudeCode) -> None:
    first = claude.run(PROMPT)
    assert first.upstream_calls == 1 and first.hits == NO_HITS
    assert first.stdout.startswith("Answer #") and first.stdout.endswith(f" to: {PROMPT}")

    second = claude.run(PROMPT)
    assert second.upstream_calls == 0  # the fake provider was called once in all
    assert second.hits == {"hit-l1-exact": 1.0, "hit-l3-verified": 0.0}
    assert second.stdout == first.stdout  # the CLI printed the cached answer

    # the same key as a Bearer token (ANTHROPIC_AUTH_TOKEN): the same tenant, the same body
    bearer = claude.run(PROMPT, bearer=True)
    assert bearer.upstream_calls == 0 and bearer.hits["hit-l1-exact"] == 1.0
    assert bearer.stdout == first.stdout

    # another key is another tenant: never served this one's answers
    other = claude.run(PROMPT, key="sk-ant-someone-else")
    assert other.upstream_calls == 1 and other.hits == NO_HITS
    assert other.stdout != first.stdout


def test_a_reworded_prompt_is_a_verified_hit(claude: ClaudeCode) -> None:
    first = claude.run(PROMPT)
    assert first.upstream_calls == 1
    # the real CLI's body: the question is the prompt, without the <system-reminder> block
    # beside it and the system-role message after it
    (body,) = first.bodies
    assert body["messages"][-1]["role"] == "system"
    assert body["messages"][0]["content"][0]["text"].startswith("<system-reminder>")
    assert AnthropicMessages().parse(json.dumps(body).encode()).question == PROMPT

    reworded = claude.run(REWORDED)
    assert reworded.upstream_calls == 0
    assert reworded.hits == {"hit-l1-exact": 0.0, "hit-l3-verified": 1.0}
    assert reworded.stdout == first.stdout  # the answer cached for the first wording

    trap = claude.run(TRAP)  # a different question in the same context: the verifier says no
    assert trap.upstream_calls == 1 and trap.hits == NO_HITS
    assert trap.stdout.endswith(f" to: {TRAP}")
