"""``reflex gateway`` as a process, configured with the seed's names (REFLEX_CLOUD_PROVIDER=gcp,
REFLEX_GCS_BUCKET, REFLEX_SNAPSHOT_PATH) against the GCS emulator: SIGTERM dehydrates after the
drain, the next start hydrates (its first repeat is an L1 hit), and REFLEX_IDLE_TIMEOUT_SECS makes
it dehydrate and exit 0 by itself while health probes and metrics scrapes go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.gateway.snapshot import open_location
from tests.lifecycle.support import GcsEmulator, emulator_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, tmp: Path, upstream: FakeUpstream, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = tmp / f"gateway-{self.port}.log"
        full = {**os.environ, "PYTHONPATH": str(ROOT), "REFLEX_PORT": str(self.port), "REFLEX_UPSTREAM_URL": upstream.url,
                "REFLEX_SEMANTIC": "0", "REFLEX_RESPONSE_FORMAT": "raw", "REFLEX_SHUTDOWN_GRACE_SECS": "5", **env}
        for name in ("REFLEX_REDIS_URL", "REFLEX_QDRANT_URL", "REFLEX_SNAPSHOT_URL"):
            full.pop(name, None)
        self._log = self.log.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "commands.cli", "gateway"], cwd=ROOT, env=full,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.base}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ask(self, question: str) -> str:
        r = httpx.post(f"{self.base}/v1/chat/completions", headers={"Authorization": "Bearer sk-process"}, timeout=30,
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]})
        assert r.status_code == 200, r.text
        return r.headers["x-reflex-status"]

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()


def test_sigterm_dehydrates_the_next_start_hydrates_and_idle_exits_0(
    tmp_path: Path, fake_upstream: FakeUpstream, gcs: GcsEmulator, bucket: str
) -> None:
    env = {"REFLEX_CLOUD_PROVIDER": "gcp", "REFLEX_GCS_BUCKET": bucket, "REFLEX_SNAPSHOT_PATH": "cache/eu",
           **gcs.env()}
    first = GatewayProcess(tmp_path, fake_upstream, env)
    assert first.ask("What is a monad?") == "miss"
    deadline = time.monotonic() + 10
    while first.ask("What is a monad?") != "hit-l1-exact":  # the write landed
        assert time.monotonic() < deadline
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.log.read_text()
    with emulator_env(gcs):
        (snapshot,) = open_location(f"gs://{bucket}/cache/eu").list()
    assert snapshot.counts == {"l2": 0, "l1": 1}

    calls = fake_upstream.chat_count
    second = GatewayProcess(tmp_path, fake_upstream, {**env, "REFLEX_IDLE_TIMEOUT_SECS": "2"})
    assert second.ask("What is a monad?") == "hit-l1-exact"  # hydrated at start
    assert fake_upstream.chat_count == calls
    started = time.monotonic()
    code = None
    while code is None and time.monotonic() - started < 20:
        try:  # probes and scrapes do not count as activity
            httpx.get(f"{second.base}/healthz", timeout=1)
            httpx.get(f"{second.base}/metrics", timeout=1)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
        code = second.process.poll()
    assert second.wait(10) == 0
    assert time.monotonic() - started >= 1.5
    log = second.log.read_text()
    assert "idle: no API request for" in log, log
    with emulator_env(gcs):
        assert len(open_location(f"gs://{bucket}/cache/eu").list()) == 2  # it dehydrated on the way out
