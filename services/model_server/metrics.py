"""Prometheus metrics of one model server, on a registry of its own.

Each server builds its own ``CollectorRegistry`` (no module-level globals), so the embedder
and the verifier can live in one process under ``reflex serve`` and in one test session
without colliding; ``reflex embedder`` / ``reflex verifier`` expose it on REFLEX_METRICS_PORT.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Stage latencies on a model server span ~50 us (a tokenizer call on one short text) to
# seconds (a full batch on a loaded CPU); these buckets resolve both ends.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _power_of_two_buckets(limit: int) -> tuple[float, ...]:
    buckets, b = [], 1
    while b < limit:
        buckets.append(float(b))
        b *= 2
    buckets.append(float(limit))
    return tuple(buckets)


class ModelMetrics:
    """Queue size, batch size, per-stage time and failures, prefixed ``reflex_<service>_``."""

    def __init__(self, service: str, *, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        prefix = f"reflex_{service}_"
        self.queue_size = Gauge(
            prefix + "queue_size", "Items (texts or pairs) admitted and not yet answered.", registry=self.registry
        )
        self.batch_size = Histogram(
            prefix + "batch_size",
            "Rows in one forward pass.",
            buckets=_power_of_two_buckets(max_batch_size),
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            prefix + "batch_tokens",
            "Padded tokens (rows x longest row) in one forward pass.",
            buckets=_power_of_two_buckets(1 << 16),
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            prefix + "stage_seconds",
            "Time per stage: queue (admitted -> batch picked up), tokenize (one batch), inference (one batch).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(prefix + "requests_total", "RPCs received, by method.", ["method"], registry=self.registry)
        self.failures = Counter(
            prefix + "failures_total",
            "Failed RPCs by reason (invalid_input, overloaded, not_serving, inference, internal).",
            ["reason"],
            registry=self.registry,
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)
