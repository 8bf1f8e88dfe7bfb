"""Prometheus metrics of one gateway app, in its own registry (no process-global state, so
several apps in one test process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Lookups are sub-millisecond on L1 and tens of milliseconds with the models; upstream calls
# take seconds. Two bucket sets keep both readable.
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reflex_gateway_requests",
            "Chat-completion requests by cache status (X-Reflex-Status, or 'error') and HTTP code.",
            ["status", "code"],
            registry=self.registry,
        )
        self.lookup_seconds = Histogram(
            "reflex_gateway_lookup_seconds",
            "Time spent in each cache-lookup stage.",
            ["stage"],  # l1, embed, l2, verify, total
            buckets=_LOOKUP_BUCKETS,
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "reflex_gateway_upstream_seconds",
            "Upstream call duration, to the last byte.",
            ["stream"],
            buckets=_UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self.tier_failures = Counter(
            "reflex_gateway_tier_failures",
            "Cache tiers that failed and were skipped (the request fell back to a miss).",
            ["component", "reason"],
            registry=self.registry,
        )
        self.cache_writes = Counter(
            "reflex_gateway_cache_writes",
            "Background cache writes by tier and result.",
            ["tier", "result"],
            registry=self.registry,
        )
        self.not_cached = Counter(
            "reflex_gateway_not_cached",
            "Upstream answers not stored, by reason (error, finish_reason, interrupted, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.hits = Counter(
            "reflex_gateway_hits",
            "Cache hits by tier (X-Reflex-Status), format served and why that format.",
            ["status", "format", "reason"],
            registry=self.registry,
        )
        self.tokens_saved = Counter(
            "reflex_gateway_tokens_saved",
            "Tokens not paid to the provider thanks to cache hits, per tenant (a blake3 id, never a key).",
            ["tenant"],
            registry=self.registry,
        )
        self.format_delta = Counter(
            "reflex_gateway_format_delta_tokens",
            "Tokens the hit format (Tauq) added or saved against the raw cached content, per tenant; "
            "direction is 'added' or 'saved', so prose-heavy tenants show what the envelope costs them.",
            ["tenant", "direction"],
            registry=self.registry,
        )
        self.model_server_seconds = Histogram(
            "reflex_gateway_model_server_seconds",
            "Time the embedder/verifier report spending on our calls, by stage (their own timing block).",
            ["component", "stage"],  # stage: queue, tokenize, inference
            buckets=_LOOKUP_BUCKETS,
            registry=self.registry,
        )
        self.verifier_scores = Histogram(
            "reflex_gateway_verifier_best_score",
            "Best verifier probability per semantic lookup (to tune REFLEX_RERANKER_THRESHOLD).",
            buckets=tuple(i / 10 for i in range(1, 11)),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
