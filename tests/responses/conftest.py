"""Fixtures shared with tests/gateway: a real gateway on a free port over the fake upstream
(either L1 backend), and the cascade's unit layer (the real embedded L2 shard with the in-test
embedder and verifier of tests/gateway/test_cascade.py), so the Responses tests drive the
same gateway the chat tests do."""

from __future__ import annotations

from tests.gateway.conftest import gateway, l1_backend, server_thread, start_gateway
from tests.gateway.test_cascade import embedder, l2, make_client, shared_l2, verifier

__all__ = ["embedder", "gateway", "l1_backend", "l2", "make_client", "server_thread", "shared_l2",
           "start_gateway", "verifier"]
