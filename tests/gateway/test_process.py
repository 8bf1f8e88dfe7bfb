"""``reflex gateway`` as a real process: it starts from REFLEX_* variables, logs its
effective settings with secrets redacted, serves, and exits cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_reflex_gateway_process_serves_and_drains_on_sigterm() -> None:
    port = free_port()
    env = {
        **os.environ,
        "REFLEX_PORT": str(port),
        "REFLEX_MOCK_PROVIDER": "1",
        "REFLEX_SEMANTIC": "0",
        "REFLEX_UPSTREAM_API_KEY": "sk-central-very-secret",
        "REFLEX_SHUTDOWN_GRACE_SECS": "5",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from reflex.cli import main; sys.exit(main(['gateway']))"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "gateway did not start"
                time.sleep(0.1)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": "Bearer sk-caller-secret"}
        first = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers)
        assert first.status_code == 200 and first.headers["x-reflex-status"] == "miss"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    assert "REFLEX_UPSTREAM_API_KEY" in output and "REFLEX_MOCK_PROVIDER" in output  # effective settings logged
    assert "sk-central-very-secret" not in output
    assert "sk-caller-secret" not in output
