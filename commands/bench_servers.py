"""The baselines ``reflex bench`` measures the gateway against, each run as a process of its own
(so none shares a GIL with the gateway or the load generator):

* ``upstream``: a minimal OpenAI-compatible provider (chat completions and models), answering at
  once. Called directly, it is the floor any request through the gateway is compared with.
* ``bare``: a bare aiohttp handler returning a fixed completion: the ceiling of an aiohttp
  server on this machine, for L1-hit throughput.

    python -m commands.bench_servers upstream|bare --port PORT

Both are deliberately separate from the tests' fake upstream (tests/support/fake_upstream.py):
``reflex bench`` is a product command and must run from an installed package.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# In a question to the fake upstream: answer it with finish_reason "length" (see _upstream_app).
CUT_SHORT = "[cut short]"

BARE_BODY = {
    "id": "chatcmpl-bare", "object": "chat.completion", "created": 0, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12},
}


def _upstream_app():  # type: ignore[no-untyped-def]
    import orjson
    from aiohttp import web

    numbers = itertools.count(1)

    async def chat(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        number = next(numbers)
        content = body["messages"][-1].get("content")
        answer = f"Answer #{number} to: {content}"
        # A question that asks for it gets an answer cut short (finish_reason "length"), which
        # the gateway never stores: the bench's misses in a populated scope keep it as it was.
        finish = "length" if isinstance(content, str) and CUT_SHORT in content else "stop"
        completion = {
            "id": f"chatcmpl-bench-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "bench-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": len(answer.split()),
                      "total_tokens": 11 + len(answer.split())},
        }
        return web.Response(body=orjson.dumps(completion), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench-model", "object": "model", "created": 0,
                                                              "owned_by": "reflex-bench"}]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def _bare_app():  # type: ignore[no-untyped-def]
    import orjson
    from aiohttp import web

    body = orjson.dumps(BARE_BODY)

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    app.router.add_get("/healthz", lambda request: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    return app


class RedisProcess:
    """A throwaway ``redis-server`` on a free port, no persistence (``reflex bench --redis``)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._dir = tempfile.TemporaryDirectory(prefix="reflex-bench-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisProcess:
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._dir.cleanup()


def spawn_server(kind: str, port: int) -> subprocess.Popen[bytes]:
    """``kind`` ("upstream" or "bare") as a child process of this Python, on ``port``."""
    return subprocess.Popen(
        [sys.executable, "-m", "commands.bench_servers", kind, "--port", str(port)],
        cwd=Path(__file__).resolve().parents[1], env=dict(os.environ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["upstream", "bare"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from aiohttp import web

    app = _upstream_app() if args.kind == "upstream" else _bare_app()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
