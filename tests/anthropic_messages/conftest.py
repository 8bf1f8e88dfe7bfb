"""Fixtures for the Messages API tests: a real gateway on a free port whose Anthropic upstream
is the fake provider, and the official ``anthropic`` SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from tests.gateway.conftest import (  # noqa: F401  (fixtures)
    RAW,
    RunningGateway,
    l1_backend,
    server_thread,
    start_gateway,
)
from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def start_messages_gateway(
    start_gateway: Callable[..., RunningGateway], fake_upstream: FakeUpstream
) -> Callable[..., RunningGateway]:
    """start_gateway with REFLEX_ANTHROPIC_UPSTREAM_URL at the fake provider."""

    def start(l1: str = "memory", **overrides: Any) -> RunningGateway:
        return start_gateway(l1, anthropic_upstream_url=fake_upstream.base_url, **overrides)

    return start


@pytest.fixture
def gateway(start_messages_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_messages_gateway()


def sync_client(gateway: RunningGateway, api_key: str | None = "sk-ant-alice", *,
                headers: dict[str, str] | None = None, **kwargs: Any) -> anthropic.Anthropic:
    # Anthropic's base URL has no /v1 (the SDK adds /v1/messages): the gateway's root
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0,
                               default_headers={**RAW, **(headers or {})}, timeout=30, **kwargs)


def async_client(gateway: RunningGateway, api_key: str = "sk-ant-alice") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=api_key, max_retries=0, default_headers=RAW,
                                    timeout=30)
