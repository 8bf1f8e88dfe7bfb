"""The gateway runs without the model stack: with ``torch``, ``transformers``, ``tokenizers`` and
``sentence_transformers`` made unimportable, the app is created, forwards a miss to the
upstream and serves the repeat as an L1 hit. This is what lets the gateway image install the
``[gateway]`` extra alone (deploy/docker/gateway.Dockerfile); import-linter forbids the imports
statically, this shows nothing pulls them in at run time either (a lazy import, a dependency).

It runs in a fresh interpreter: this test process has torch loaded already (other tests use it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "tokenizers", "sentence_transformers")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    BLOCKED = set(sys.argv[1].split(","))


    class BlockModels(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the gateway must run without it", name=name)
            return None


    sys.meta_path.insert(0, BlockModels())
    already = sorted(m for m in BLOCKED if m in sys.modules)
    assert not already, f"loaded before the blocker: {already}"
    for name in sorted(BLOCKED):  # the blocker really blocks
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise AssertionError(f"import {name} was not blocked")

    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from reflex.settings import GatewaySettings
    from services.gateway.app import create_app
    from services.gateway.state import STATE
    from tests.support.fake_upstream import FakeUpstream


    async def main():
        upstream = FakeUpstream(chunk_delay=0)
        await upstream.start_async()
        settings = GatewaySettings.build(
            port=0, semantic=False, mock_provider=False, upstream_url=upstream.url, redis_url=None
        )
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "hello without torch"}]}
            headers = {"Authorization": "Bearer sk-test-alice", "X-Reflex-Format": "raw"}
            answers = []
            for _ in range(2):
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
                answers.append({
                    "code": response.status,
                    "cache": response.headers.get("X-Reflex-Status"),
                    "content": (await response.json())["choices"][0]["message"]["content"],
                })
                await client.app[STATE].settle()  # the L1 write of the miss is done in the background
        finally:
            await client.close()
            await upstream.stop_async()
        return {"answers": answers, "upstream_calls": upstream.chat_count}


    result = asyncio.run(main())
    result["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print("RESULT " + json.dumps(result))
    """
)


def test_gateway_serves_an_l1_hit_with_torch_and_transformers_unimportable() -> None:
    # Settings come from the environment too: only the overrides above may configure this gateway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")} | {"PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (line,) = [ln for ln in completed.stdout.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    first, second = result["answers"]
    assert first == {"code": 200, "cache": "miss", "content": "Answer #1 to: hello without torch"}
    assert second == {"code": 200, "cache": "hit-l1-exact", "content": first["content"]}
    assert result["upstream_calls"] == 1  # the repeat never reached the upstream
    assert result["loaded"] == []  # nothing of the model stack got in, not even partly
