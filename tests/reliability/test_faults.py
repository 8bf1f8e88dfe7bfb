"""Faults under load, with real processes: Redis, the upstream, the embedder and the verifier are
each killed (SIGKILL) or frozen (SIGSTOP, then SIGCONT) while a few clients keep asking.

What must hold, whatever the fault:

- no request fails because of it, except a miss while the upstream itself is down, which gets
  the gateway's 502 (connection refused) or 504 (timed out) in the protocol's envelope; hits
  are served throughout;
- every answer a client receives is one the upstream gave for the question asked (exact hits and
  misses) and arrived whole, or, for a stream the outage cut, ends with the protocol's in-band
  error event; nothing incomplete or failed is ever cached (every question is asked again after
  the fault: a hit must be whole);
- the gateway recovers by itself: once the component is back (restarted on the same port, or
  SIGCONT), requests are served normally again (exact hits from Redis, verified hits through the
  embedder, L2 and the verifier) without restarting anything.

The gateway runs in this process (on a loop thread, reached over TCP); the others are separate
processes: ``redis-server``, the fake upstream (``python -m tests.support.fake_upstream``, the one
fake), and ``reflex embedder`` / ``reflex verifier`` with the real models. The load and the
answer checks are written once (tests/support/load.py) and run per protocol where the fault
touches the protocol's own path (the upstream relay: all three protocols; Redis: chat and
Messages); the model services are protocol-independent, so chat alone (plus Messages for a
kill -9 of the embedder).

The tests with the model processes are marked slow (a restart reloads a model). At the end:
SIGTERM with a request in flight, per protocol (chat's is tests/gateway/test_process.py), and a
client that hangs up while its stream is relayed. The restart of ``reflex serve`` after kill -9
with L2 intact is in tests/e2e/test_serve.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reflex.settings import GatewaySettings
from services.gateway.main import GatewayServer
from services.gateway.state import STATE
from tests.gateway.test_process import DRAINING, IN_FLIGHT_SECS, Output
from tests.support.fake_upstream import FakeUpstream, slow
from tests.support.load import PROTOCOLS, Load, Reply, ask
from tests.support.loop_thread import LoopThread
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
WARM = ("How do I center a div in CSS?", "What is a race condition?", "How do I reverse a linked list?",
        "What does HTTP 429 mean?")
# A rewording the shipped verifier accepts at its default threshold (tests/e2e/test_serve.py).
PAIR = ("How do I center a div in CSS?", "How can I center a div using CSS?")
# Seconds into the load. The outage outlasts the upstream timeouts, so that a request waiting on a
# frozen upstream times out (504) before SIGCONT rather than racing it.
FAULT_AT, RESTORE_AT, LOAD_SECS = 1.0, 3.5, 5.5
UPSTREAM_TIMEOUT_SECS = 1.5
ANSWER = re.compile(r"Answer #\d+ to: (.*)", re.DOTALL)


# ---------------------------------------------------------------------------- processes


class Child:
    """A process of ours on a fixed port, which the tests kill, freeze and bring back."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool], log: Path,
                 start_timeout: float = 120.0) -> None:
        self.name, self.argv, self.env, self.ready, self.log = name, argv, env, ready, log
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Child":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            assert self.process.poll() is None, f"{self.name} exited:\n{self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLEX_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def grpc_serving(target: str) -> Callable[[], bool]:
    def ready() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    return ready


def fake_upstream_process(log_dir: Path) -> Child:
    port = free_port()
    return Child("fake upstream", [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(port),
                                   "--chunk-delay", "0.005"],
                 child_env(), http_ready(f"http://127.0.0.1:{port}/v1/models"), log_dir / "upstream.log",
                 start_timeout=60).start()


def model_process(service: str, log_dir: Path) -> Child:
    port = free_port()
    argv = [sys.executable, "-c", f"import sys; from commands.cli import main; sys.exit(main([{service!r}]))"]
    env = child_env(REFLEX_GRPC_PORT=str(port), REFLEX_TORCH_THREADS="1", REFLEX_SHUTDOWN_GRACE_SECS_GRPC="0")
    return Child(service, argv, env, grpc_serving(f"127.0.0.1:{port}"), log_dir / f"{service}.log").start()


def port_of(child: Child) -> int:
    return int(child.argv[child.argv.index("--port") + 1]) if "--port" in child.argv else int(child.env["REFLEX_GRPC_PORT"])


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-logs")


@pytest.fixture(scope="module")
def upstream(logs: Path) -> Iterator[Child]:
    child = fake_upstream_process(logs)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # its own: these tests kill it
        yield server


@pytest.fixture(scope="module")
def embedder(logs: Path) -> Iterator[Child]:
    child = model_process("embedder", logs)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def verifier(logs: Path) -> Iterator[Child]:
    child = model_process("verifier", logs)
    yield child
    child.stop()


@pytest.fixture(scope="module")
def thread() -> Iterator[LoopThread]:
    loop = LoopThread("faults")
    yield loop
    loop.close()


@dataclass
class Gateway:
    server: GatewayServer
    thread: LoopThread

    @property
    def url(self) -> str:
        return self.server.url

    def flush(self) -> None:
        self.thread.run(self.server.flush())

    def tier_failures(self, component: str) -> float:
        """How often the gateway found ``component`` failing and fell back (any reason): the
        fault was real, and seen."""
        registry = self.server.app[STATE].metrics.registry
        return sum(sample.value for metric in registry.collect() for sample in metric.samples
                   if sample.name == "reflex_gateway_tier_failures_total" and sample.labels["component"] == component)


@pytest.fixture
def start_gateway(thread: LoopThread, upstream: Child, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[GatewayServer] = []
    upstream_port = port_of(upstream)

    def start(**overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "port": 0, "mock_provider": False, "semantic": False, "storage_path": tmp_path,
            "upstream_url": f"http://127.0.0.1:{upstream_port}/v1",
            "anthropic_upstream_url": f"http://127.0.0.1:{upstream_port}",
            "upstream_timeout_secs": UPSTREAM_TIMEOUT_SECS, "upstream_first_byte_timeout_secs": UPSTREAM_TIMEOUT_SECS,
            "upstream_idle_timeout_secs": UPSTREAM_TIMEOUT_SECS, "upstream_connect_timeout_secs": 1.0,
            "redis_timeout_ms": 250, "redis_retry_secs": 0.5, "tier_retry_secs": 0.5,
            # shorter than the outage (a frozen model service must time out before SIGCONT),
            # long enough that a loaded machine does not turn a slow call into a miss outside it
            "embedder_timeout_ms": 1500, "verifier_timeout_ms": 1500,
            **overrides,
        }
        settings = GatewaySettings.build(**values)

        async def make() -> GatewayServer:
            server = GatewayServer(settings)
            await server.start()
            return server

        server = thread.run(make())
        started.append(server)
        return Gateway(server, thread)

    yield start
    for server in started:
        thread.run(server.stop())


# ---------------------------------------------------------------------------- the checks


def question_of(reply: Reply) -> str | None:
    """The question the reply's answer names (the fake upstream's "Answer #N to: <question>")."""
    assert reply.answer is not None
    found = ANSWER.fullmatch(reply.answer.text)
    return found.group(1) if found else None


def check_replies(replies: list[Reply], *, outage: tuple[float, float] | None = None,
                  asked: set[str] | None = None) -> None:
    """What every reply under a fault must be (see the module docstring).

    ``outage``: the window in which the upstream was down; misses in it may be 502 / 504, and a
    stream that was cut may end in its in-band error. ``asked``: with the semantic tiers on, a
    verified hit may answer a reworded question: it must then name one that was asked."""
    assert replies, "the load sent nothing"
    for reply in replies:
        context = (reply.at, reply.protocol, reply.question, reply.stream, reply.status, reply.cache, reply.body[:300])
        in_outage = outage is not None and outage[0] <= reply.at <= outage[1]
        if reply.status in (502, 504) and in_outage and reply.cache == "miss":
            continue
        assert reply.status == 200, context
        assert reply.answer is not None
        if not reply.answer.complete:
            # only a miss relayed while the upstream broke off, ended with an in-band error
            assert in_outage and reply.cache == "miss" and reply.stream and reply.answer.error_event, context
            continue
        named = question_of(reply)
        if reply.cache == "hit-l3-verified" and asked is not None:
            assert named in asked, context
        else:
            assert named == reply.question, context


def check_nothing_wrong_cached(gateway: Gateway, protocol: str, questions: set[str], key: str = "sk-load-tenant",
                               asked: set[str] | None = None) -> None:
    """Ask every question again: whatever is served now (a hit of what was cached during the
    fault, or a fresh miss) is a whole answer to that question."""
    gateway.flush()
    with httpx.Client(timeout=30) as client:
        for question in sorted(questions):
            for stream in (False, True):
                reply = ask(client, gateway.url, protocol, question, stream=stream, key=key)
                assert reply.status == 200 and reply.answer is not None and reply.answer.complete, reply
                named = question_of(reply)
                assert named == question or (reply.cache == "hit-l3-verified" and asked and named in asked), reply


def run_load(gateway: Gateway, protocol: str, fault: Callable[[], None], restore: Callable[[], None],
             seed: int) -> list[Reply]:
    load = Load(gateway.url, protocol, WARM, clients=4, seed=seed).start()
    for at, action in ((FAULT_AT, fault), (RESTORE_AT, restore)):
        time.sleep(max(0.0, at - load.elapsed))
        action()
    time.sleep(max(0.0, LOAD_SECS - load.elapsed))
    replies = load.stop()
    # shown with a failure (and with -s): what the clients saw, per (status, X-Reflex-Status)
    print(f"{protocol}: {len(replies)} replies", dict(Counter((r.status, r.cache) for r in replies)))
    return replies


def seed_warm(gateway: Gateway, protocol: str) -> None:
    with httpx.Client(timeout=30) as client:
        for question in WARM:
            assert ask(client, gateway.url, protocol, question, stream=False, key="sk-load-tenant").status == 200
    gateway.flush()


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"the gateway did not recover by itself: {what}"
        time.sleep(0.2)


def asked_questions(replies: list[Reply]) -> set[str]:
    return {r.question for r in replies}


# ---------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("protocol", ["chat", "messages"])
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_redis_fault_under_load(start_gateway: Callable[..., Gateway], redis: RedisServer, protocol: str,
                                fault: str) -> None:
    redis.flushall()
    gateway = start_gateway(redis_url=redis.url)
    seed_warm(gateway, protocol)
    if fault == "kill":
        replies = run_load(gateway, protocol, lambda: os.kill(redis.pid, signal.SIGKILL),
                           lambda: (redis.stop(), redis.start()), seed=1)
    else:
        replies = run_load(gateway, protocol, lambda: os.kill(redis.pid, signal.SIGSTOP),
                           lambda: os.kill(redis.pid, signal.SIGCONT), seed=2)
    check_replies(replies)  # Redis down costs hits, never a request
    assert gateway.tier_failures("redis") > 0
    during = [r for r in replies if FAULT_AT + 0.3 <= r.at <= RESTORE_AT]
    assert during and all(r.status == 200 for r in during)

    # recovery: a new question is stored in Redis again and served from it
    def exact_hits_again() -> bool:
        question = f"After the Redis {fault}, at {time.monotonic()}?"
        with httpx.Client(timeout=30) as client:
            first = ask(client, gateway.url, protocol, question, stream=False, key="sk-load-tenant")
            gateway.flush()
            again = ask(client, gateway.url, protocol, question, stream=False, key="sk-load-tenant")
        return first.status == 200 and again.cache == "hit-l1-exact"

    eventually(exact_hits_again, 15, "no exact hit from Redis")
    assert redis.keys(), "nothing was written to Redis after it came back"
    check_nothing_wrong_cached(gateway, protocol, asked_questions(replies))


# ---------------------------------------------------------------------------- the upstream


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_upstream_fault_under_load(start_gateway: Callable[..., Gateway], upstream: Child, protocol: str,
                                   fault: str) -> None:
    gateway = start_gateway()
    seed_warm(gateway, protocol)
    if fault == "kill":
        replies = run_load(gateway, protocol, upstream.kill, upstream.start, seed=3)
    else:
        replies = run_load(gateway, protocol, lambda: os.kill(upstream.pid, signal.SIGSTOP),
                           lambda: os.kill(upstream.pid, signal.SIGCONT), seed=4)
    # misses in the outage (and those still waiting on a frozen upstream until its timeout) may
    # fail with 502/504; nothing else may fail, ever
    check_replies(replies, outage=(FAULT_AT - 0.2, RESTORE_AT + UPSTREAM_TIMEOUT_SECS + 1.0))
    outage = [r for r in replies if FAULT_AT + 0.2 <= r.at <= RESTORE_AT]
    assert any(r.status == 200 and r.cache == "hit-l1-exact" for r in outage), "no hit was served in the outage"
    failed = Counter(r.status for r in replies if r.status != 200)
    cut = sum(1 for r in replies if r.answer is not None and r.answer.error_event)
    # the outage was real: misses failed, as 502 (refused) after a kill, 504 (timed out) when
    # frozen, or a stream under way ended in its in-band error
    assert failed[502 if fault == "kill" else 504] + cut > 0 and set(failed) <= {502, 504}, (failed, cut)

    # the protocol's own envelope on the failures
    for reply in replies:
        if reply.status in (502, 504):
            body = httpx.Response(200, content=reply.body).json()
            assert (body["type"] == "error") if protocol == "messages" else ("error" in body and "code" in body["error"])

    def misses_answered_again() -> bool:
        with httpx.Client(timeout=30) as client:
            reply = ask(client, gateway.url, protocol, f"After the upstream {fault}, at {time.monotonic()}?",
                        stream=False, key="sk-load-tenant")
        return reply.status == 200 and reply.cache == "miss"

    eventually(misses_answered_again, 15, "misses still fail")
    check_nothing_wrong_cached(gateway, protocol, asked_questions(replies))


# ---------------------------------------------------------------------------- the model services


def verified_hit(gateway: Gateway, protocol: str, tenant: str) -> bool:
    """One verified paraphrase hit, in a tenant of its own (so no earlier attempt is in its way)."""
    with httpx.Client(timeout=30) as client:
        first = ask(client, gateway.url, protocol, PAIR[0], stream=False, key=tenant)
        gateway.flush()
        reworded = ask(client, gateway.url, protocol, PAIR[1], stream=False, key=tenant)
    return first.status == 200 and reworded.cache == "hit-l3-verified"


def model_fault(start_gateway: Callable[..., Gateway], embedder: Child, verifier: Child, victim: Child,
                protocol: str, fault: str) -> None:
    gateway = start_gateway(semantic=True, embedder_url=f"127.0.0.1:{port_of(embedder)}",
                            verifier_url=f"127.0.0.1:{port_of(verifier)}")
    assert verified_hit(gateway, protocol, "sk-before-the-fault"), "no verified hit even before the fault"
    seed_warm(gateway, protocol)
    if fault == "kill":
        replies = run_load(gateway, protocol, victim.kill, lambda: None, seed=5)
        victim.start()  # reloading the model takes seconds: the gateway keeps serving meanwhile
    else:
        replies = run_load(gateway, protocol, lambda: os.kill(victim.pid, signal.SIGSTOP),
                           lambda: os.kill(victim.pid, signal.SIGCONT), seed=6)
    asked = asked_questions(replies) | set(WARM)
    check_replies(replies, asked=asked)  # a model service down costs semantic hits, never a request
    assert gateway.tier_failures(victim.name) > 0
    attempts = iter(range(1000))
    eventually(lambda: verified_hit(gateway, protocol, f"sk-recovered-{next(attempts)}"), 30,
               f"no verified hit after the {victim.name} came back")
    check_nothing_wrong_cached(gateway, protocol, asked, asked=asked)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "stop"])
@pytest.mark.parametrize("service", ["embedder", "verifier"])
def test_model_service_fault_under_load(start_gateway: Callable[..., Gateway], embedder: Child, verifier: Child,
                                        service: str, fault: str) -> None:
    model_fault(start_gateway, embedder, verifier, embedder if service == "embedder" else verifier, "chat", fault)


@pytest.mark.slow
def test_embedder_kill_under_anthropic_load(start_gateway: Callable[..., Gateway], embedder: Child,
                                            verifier: Child) -> None:
    model_fault(start_gateway, embedder, verifier, embedder, "messages", "kill")


# ---------------------------------------------------------------------------- SIGTERM, per protocol


@pytest.mark.parametrize("protocol", ["messages", "responses"])  # chat: tests/gateway/test_process.py
def test_sigterm_drains_a_request_in_flight(fake_upstream: FakeUpstream, protocol: str) -> None:
    """``reflex gateway`` as a process: on SIGTERM it stops taking connections, finishes the
    request in flight (whole, in the protocol's own format) and exits 0."""
    port = free_port()
    env = child_env(REFLEX_PORT=str(port), REFLEX_UPSTREAM_URL=fake_upstream.url,
                    REFLEX_ANTHROPIC_UPSTREAM_URL=fake_upstream.base_url, REFLEX_MOCK_PROVIDER="0",
                    REFLEX_SEMANTIC="0", REFLEX_SHUTDOWN_GRACE_SECS="15", REFLEX_LOG_LEVEL="INFO")
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from commands.cli import main; sys.exit(main(['gateway']))"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = Output(process)
    base = f"http://127.0.0.1:{port}"
    path = "/v1/messages" if protocol == "messages" else "/v1/responses"
    pool = ThreadPoolExecutor(max_workers=1)

    def send(question: str) -> Reply:
        with httpx.Client(timeout=30) as client:  # a new connection each time, never a kept-alive one
            return ask(client, base, protocol, question, stream=protocol == "messages", key="sk-drain")

    try:
        assert eventually_ready(base, process), output.text
        assert send("hi").status == 200
        fake_upstream.fail_next(slow(IN_FLIGHT_SECS))
        in_flight = pool.submit(send, "a slow one")
        deadline = time.monotonic() + 30
        while len(fake_upstream.calls_to(path)) < 2:
            assert time.monotonic() < deadline and not in_flight.done(), "the request never reached the upstream"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert output.wait_for(DRAINING, timeout=IN_FLIGHT_SECS / 2), output.text
        late = send("too late")  # refused (a transport error) or told 503: not accepted
        assert late.status == 503 or isinstance(late.status, str), late
        assert not in_flight.done(), "the in-flight request ended before the drain was observed"
        answer = in_flight.result(timeout=30)
        assert answer.status == 200 and answer.answer is not None and answer.answer.complete, answer
        assert answer.answer.text == "Answer #2 to: a slow one"
        assert len(fake_upstream.calls_to(path)) == 2  # the late request never reached the upstream
        assert process.wait(30) == 0, output.text
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if process.poll() is None:
            process.kill()
            process.wait()


def eventually_ready(base: str, process: subprocess.Popen[str], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if http_ready(base + "/healthz")():
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------- a client that leaves


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_client_leaving_mid_stream_is_not_an_upstream_failure(
    thread: LoopThread, fake_upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, protocol: str,
) -> None:
    """Found by the soak: when the caller hung up while a relayed stream was being written,
    aiohttp's ClientConnectionResetError (a ClientError too) was taken for an upstream failure:
    counted as "interrupted", logged, and a second write into the dead connection raised out of
    the handler as a 500 with a traceback. The hang-up is made deterministic here: the relay's
    second write fails the way aiohttp fails it on a closing transport."""
    from aiohttp import web
    from aiohttp.client_exceptions import ClientConnectionResetError

    real_write = web.StreamResponse.write
    writes: Counter[int] = Counter()

    async def write(self: web.StreamResponse, data: bytes) -> None:
        # the gateway's relay only (its answers carry X-Reflex-Status), not the fake upstream's
        writes[id(self)] += 1
        if "X-Reflex-Status" in self.headers and writes[id(self)] == 2:
            raise ClientConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    settings = GatewaySettings.build(port=0, mock_provider=False, semantic=False, storage_path=tmp_path,
                                     upstream_url=fake_upstream.url, anthropic_upstream_url=fake_upstream.base_url)

    async def make() -> GatewayServer:
        server = GatewayServer(settings)
        await server.start()
        return server

    server = thread.run(make())
    try:
        monkeypatch.setattr(web.StreamResponse, "write", write)
        with httpx.Client(timeout=30) as client:
            ask(client, server.url, protocol, "Who leaves early?", stream=True, key="sk-leaver")
        monkeypatch.undo()
        thread.run(server.flush())
        metrics = server.app[STATE].metrics.registry
        assert not metrics.get_sample_value("reflex_gateway_not_cached_total", {"reason": "interrupted"})
        assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
        with httpx.Client(timeout=30) as client:  # what was cut short was not cached
            again = ask(client, server.url, protocol, "Who leaves early?", stream=True, key="sk-leaver")
        assert again.status == 200 and again.cache == "miss" and again.answer is not None and again.answer.complete
    finally:
        thread.run(server.stop())
