"""A small concurrent load on a gateway, in any of its three protocols, and what each client saw.

The fault tests (tests/reliability/test_faults.py) run it while a component is killed or
stopped. Each client is a thread with its own ``httpx`` client; it loops until told to stop,
asking warm questions again (hits), new ones (misses, then hits when it repeats them) and
paraphrases, streaming or not. Every reply is kept: its status, X-Reflex-Status, the answer text
rebuilt from the protocol's own JSON or SSE events, and whether a stream ended with its
protocol's end marker. The fake upstream answers "Answer #N to: <question>", so an answer can
be checked against the question it was served for.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

PROTOCOLS = ("chat", "messages", "responses")
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def request_body(protocol: str, question: str, *, stream: bool, model: str = "fake-model") -> dict[str, Any]:
    if protocol == "chat":
        return {"model": model, "messages": [{"role": "user", "content": question}], "stream": stream}
    if protocol == "messages":
        return {"model": model, "max_tokens": 128, "messages": [{"role": "user", "content": question}],
                "stream": stream}
    return {"model": model, "input": question, "store": False, "stream": stream}


def request_headers(protocol: str, key: str) -> dict[str, str]:
    headers = {"X-Reflex-Format": "raw"}
    if protocol == "messages":
        headers.update({"x-api-key": key, "anthropic-version": "2023-06-01"})
    else:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@dataclass(frozen=True)
class Answer:
    """An answer's text as the client reads it, and whether it arrived whole."""

    text: str
    complete: bool  # a JSON answer, or a stream that reached its end marker without an error event
    error_event: bool = False


def _sse_events(data: bytes) -> Iterable[tuple[str, Any]]:
    event = ""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            payload = line[5:].strip()
            yield event, payload if payload == "[DONE]" else orjson.loads(payload)
        elif not line:
            event = ""


def read_answer(protocol: str, stream: bool, data: bytes) -> Answer:
    """The answer text of a 200 reply, from the protocol's JSON body or its SSE events."""
    if not stream:
        body = orjson.loads(data)
        if protocol == "chat":
            return Answer(body["choices"][0]["message"]["content"] or "", True)
        if protocol == "messages":
            return Answer("".join(b["text"] for b in body["content"] if b.get("type") == "text"), True)
        return Answer("".join(p["text"] for item in body["output"] if item.get("type") == "message"
                              for p in item["content"] if p.get("type") == "output_text"), True)
    pieces: list[str] = []
    ended = error = False
    for event, obj in _sse_events(data):
        if obj == "[DONE]":
            ended = protocol == "chat"
            continue
        kind = obj.get("type") or event
        if "error" in obj and (protocol != "messages" or kind == "error"):
            error = True
        if protocol == "chat":
            for choice in obj.get("choices") or ():
                pieces.append((choice.get("delta") or {}).get("content") or "")
        elif protocol == "messages":
            if kind == "content_block_delta" and obj["delta"].get("type") == "text_delta":
                pieces.append(obj["delta"]["text"])
            ended = ended or kind == "message_stop"
        else:
            if kind == "response.output_text.delta":
                pieces.append(obj["delta"])
            ended = ended or kind == "response.completed"
            error = error or kind in ("response.failed", "error")
    return Answer("".join(pieces), ended and not error, error)


@dataclass(frozen=True)
class Reply:
    at: float  # seconds since the load started
    protocol: str
    question: str
    stream: bool
    status: int | str  # the HTTP status, or the name of a transport error
    cache: str | None  # X-Reflex-Status
    answer: Answer | None  # for 200 replies
    body: bytes = b""


def ask(client: httpx.Client, base: str, protocol: str, question: str, *, stream: bool, key: str,
        started: float = 0.0) -> Reply:
    at = time.monotonic() - started if started else 0.0
    try:
        response = client.post(base + PATHS[protocol], json=request_body(protocol, question, stream=stream),
                               headers=request_headers(protocol, key))
    except httpx.HTTPError as exc:
        return Reply(at, protocol, question, stream, type(exc).__name__, None, None)
    answer = read_answer(protocol, stream, response.content) if response.status_code == 200 else None
    return Reply(at, protocol, question, stream, response.status_code, response.headers.get("x-reflex-status"),
                 answer, response.content)


@dataclass
class Load:
    """``clients`` threads asking questions until ``stop()``; ``replies`` is what they saw."""

    base: str
    protocol: str
    warm: tuple[str, ...]
    clients: int = 3
    key: str = "sk-load-tenant"
    seed: int = 0
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> "Load":
        self._started = time.monotonic()
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Reply]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.replies

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _client(self, number: int) -> None:
        rng = random.Random(f"{self.seed}-{number}")
        asked: list[str] = []
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                draw = rng.random()
                if draw < 0.4:
                    question = rng.choice(self.warm)
                elif draw < 0.7 and asked:
                    question = rng.choice(asked)  # one of its own earlier misses: a hit once stored
                else:
                    question = f"Load question {number}.{len(asked)} (seed {self.seed})?"
                    asked.append(question)
                reply = ask(client, self.base, self.protocol, question, stream=rng.random() < 0.4, key=self.key,
                            started=self._started)
                with self._lock:
                    self.replies.append(reply)
                time.sleep(0.01)

