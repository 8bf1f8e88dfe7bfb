"""Reading a running gateway's own figures from its /metrics, for tests that drive it over HTTP."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(base: str, name: str, **labels: str) -> float:
    """The sum of the ``name`` samples at ``base``/metrics whose labels include ``labels``."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    wanted = set(labels.items())
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and wanted <= set(s.labels.items()))


def pending_writes(base: str) -> float:
    """Cache writes the gateway spawned and has not finished (an L2 write waits for its
    question's embedding, which a lookup in an empty scope did not wait for)."""
    return sample(base, "reflex_gateway_pending_cache_writes")
