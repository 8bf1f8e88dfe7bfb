"""The fake upstream: a small OpenAI-compatible provider of ours, the one fake of
the product's surroundings (there is no internet here; see the README's "What the tests use").

It counts and records calls, streams its answer word by word with a delay, and fails on
demand. Each answer names its call number ("Answer #3 to: ..."), so a test can tell a
replay from the cache (same number) from a fresh upstream answer (a new one).

Behaviours are queued with ``fail_next(...)`` and consumed one per chat call; the default
is a normal answer.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support import fake_anthropic, fake_responses
from tests.support.loop_thread import LoopThread


@dataclass(frozen=True)
class Behaviour:
    kind: str = "ok"  # ok | status | length | content_filter | tool_calls | disconnect | slow | gated
    status: int = 500
    delay: float = 0.0  # "slow": seconds before answering
    chunks_before_failure: int = 2  # "disconnect" on a stream: chunks sent before the cut
    odd_event: bytes = b""  # "odd_chunk": this SSE event is sent second, as it is


OK = Behaviour()
# The endpoints that answer a question: fail_next() behaviours apply to these calls only.
ANSWERING_PATHS = ("/chat/completions", "/v1/messages", "/v1/responses")


def status(code: int) -> Behaviour:
    return Behaviour("status", status=code)


LENGTH = Behaviour("length")
CONTENT_FILTER = Behaviour("content_filter")
TOOL_CALLS = Behaviour("tool_calls")
DISCONNECT = Behaviour("disconnect")
GATED = Behaviour("gated")  # stream one chunk, then wait for `gate` before the rest


def slow(delay: float) -> Behaviour:
    return Behaviour("slow", delay=delay)


def odd_chunk(payload: dict[str, Any]) -> Behaviour:
    """A stream with one extra chunk of an unexpected shape (a provider's quirk or a new field)."""
    return Behaviour("odd_chunk", odd_event=b"data: " + orjson.dumps(payload) + b"\n\n")


@dataclass
class RecordedCall:
    number: int
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]


# A file Aider added to the chat, as it shows it: the path alone on a line, then the file in a fence.
_AIDER_FILE = re.compile(r"^([^\n`]+)\n(`{3,})[^\n]*\n(.*?)^\2$", re.MULTILINE | re.DOTALL)


def aider_edit_block(number: int, body: dict[str, Any]) -> str | None:
    """For a request whose system prompt asks for SEARCH/REPLACE blocks (Aider's diff format):
    one valid edit block that puts ``# Answer #N`` above the first line of the first file shown
    in the chat, so a test can see which call's edit a cached answer applied. None otherwise."""
    messages = body.get("messages") or []
    texts = [m.get("content") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]
    if not any(m.get("role") == "system" and "SEARCH/REPLACE" in str(m.get("content")) for m in messages):
        return None
    for text in texts:
        if "added these files to the chat" not in text:
            continue
        found = _AIDER_FILE.search(text.split("added these files to the chat", 1)[1])
        if found is None:
            continue
        path, fence, content = found.groups()
        first = next((line for line in content.splitlines() if line.strip()), None)
        if first is None:
            continue
        return (f"I will mark the file.\n\n{path}\n{fence}\n<<<<<<< SEARCH\n{first}\n=======\n"
                f"# Answer #{number}\n{first}\n>>>>>>> REPLACE\n{fence}\n")
    return None


@dataclass
class FakeUpstream:
    chunk_delay: float = 0.005
    calls: list[RecordedCall] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._runner: web.AppRunner | None = None
        self._thread: LoopThread | None = None
        self.port = 0
        self.last_stream = b""  # the bytes of the last stream sent, for byte-for-byte relay checks

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        """The OpenAI-style base URL (Chat Completions, Responses)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def base_url(self) -> str:
        """The Anthropic-style base URL (no /v1: the client adds /v1/messages)."""
        return f"http://127.0.0.1:{self.port}"

    def calls_to(self, path: str) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    @property
    def chat_calls(self) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self.calls if c.path == "/v1/chat/completions"]

    @property
    def chat_count(self) -> int:
        return len(self.chat_calls)

    def fail_next(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self._queue.clear()
        self.gate.clear()

    def _record(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> tuple[int, Behaviour]:
        with self._lock:
            number = len(self.calls) + 1
            self.calls.append(RecordedCall(number, path, body, headers))
            behaviour = self._queue.popleft() if self._queue and path.endswith(ANSWERING_PATHS) else OK
        return number, behaviour

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeUpstream":
        """Serve on a thread of its own, so sync clients and other loops can reach it."""
        self._thread = LoopThread("fake-upstream")
        self._thread.run(self.start_async())
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.run(self.stop_async())
            self._thread.close()
            self._thread = None

    def add_routes(self, app: web.Application) -> None:
        """Every protocol this fake provider speaks; each protocol module adds its own."""
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        fake_anthropic.add_routes(self, app)
        fake_responses.add_routes(self, app)

    async def start_async(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop_async(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ provider
    async def _models(self, request: web.Request) -> web.Response:
        self._record(request.path, None, dict(request.headers))
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "tests"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        number, behaviour = self._record(request.path, body, dict(request.headers))
        if behaviour.kind == "slow":
            await asyncio.sleep(behaviour.delay)
        if behaviour.kind == "status":
            return web.json_response(
                {"error": {"message": f"fake upstream failure {behaviour.status}", "type": "server_error", "param": None, "code": "fake"}},
                status=behaviour.status,
            )
        if behaviour.kind == "disconnect" and not body.get("stream"):
            assert request.transport is not None
            request.transport.close()  # no response at all: the gateway sees a dropped connection
            await asyncio.sleep(0.05)
            raise web.HTTPInternalServerError()
        completion = self.completion(number, body, behaviour)
        if not body.get("stream"):
            return web.json_response(completion)
        return await self._stream(request, completion, body, behaviour)

    @staticmethod
    def answer(number: int, body: dict[str, Any], choice: int = 0) -> str:
        edit = aider_edit_block(number, body)
        if edit is not None:
            return edit
        content = body["messages"][-1].get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        suffix = f" (choice {choice})" if choice else ""
        return f"Answer #{number} to: {content}{suffix}"

    def completion(self, number: int, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
        finish = {"length": "length", "content_filter": "content_filter", "tool_calls": "tool_calls"}.get(
            behaviour.kind, "stop"
        )
        choices = []
        for i in range(int(body.get("n") or 1)):
            message: dict[str, Any] = {"role": "assistant", "content": self.answer(number, body, i)}
            if behaviour.kind == "tool_calls":
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": f"call_{number}_{i}", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}
                    ],
                }
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": None})
        words = sum(len((c["message"]["content"] or "").split()) for c in choices)
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "system_fingerprint": "fp_fake",
            "choices": choices,
            "usage": {"prompt_tokens": 11, "completion_tokens": words, "total_tokens": 11 + words},
        }

    async def _stream(
        self, request: web.Request, completion: dict[str, Any], body: dict[str, Any], behaviour: Behaviour
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "req-fake"})
        await response.prepare(request)
        base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")} | {"object": "chat.completion.chunk"}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

        events: list[bytes] = []
        for choice in completion["choices"]:
            i, message = choice["index"], choice["message"]
            events.append(event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
            if message.get("content"):
                for word_index, word in enumerate(message["content"].split(" ")):
                    piece = word if word_index == 0 else " " + word
                    events.append(event([{"index": i, "delta": {"content": piece}, "finish_reason": None}]))
            for call_index, call in enumerate(message.get("tool_calls") or []):
                args = call["function"]["arguments"]
                half = len(args) // 2
                events.append(event([{"index": i, "delta": {"tool_calls": [
                    {"index": call_index, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": args[:half]}}]}, "finish_reason": None}]))
                events.append(event([{"index": i, "delta": {"tool_calls": [
                    {"index": call_index, "function": {"arguments": args[half:]}}]}, "finish_reason": None}]))
        for choice in completion["choices"]:
            events.append(event([{"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(event([], usage=completion["usage"]))
        events.append(b"data: [DONE]\n\n")
        if behaviour.kind == "odd_chunk":
            events.insert(1, behaviour.odd_event)
        self.last_stream = b"".join(events)

        for n, data in enumerate(events):
            if behaviour.kind == "disconnect" and n == behaviour.chunks_before_failure:
                assert request.transport is not None
                request.transport.close()  # cut mid-stream, no [DONE]
                return response
            await response.write(data)
            if behaviour.kind == "gated" and n == 0:
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            elif self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write_eof()
        return response


def main() -> None:
    """``python -m tests.support.fake_upstream --port N``: serve until killed (benchmarks run
    it as a separate process so that it does not share a GIL with what it measures)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeUpstream(chunk_delay=args.chunk_delay)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        fake.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
