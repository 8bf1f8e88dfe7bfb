"""Prometheus metrics of one gateway app, in its own registry (no process-global state, so
several apps in one test process never share counters)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# Lookups are sub-millisecond on L1 and tens of milliseconds with the models; upstream calls
# take seconds. Two bucket sets keep both readable.
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# The label every tenant past the cap shares (see GatewayMetrics.tenant).
OTHER_TENANTS = "other"


# ---------------------------------------------------------------------------- the event loop's metrics
# The gateway's counters and histograms are updated by the event loop's thread only, on every
# request: an L1 hit updates six. prometheus_client's own take a lock per update (a histogram
# one per bucket it touches) and validate the label values on every labels() call: about 2 us
# per update here, an eighth of an L1 hit's own work. These keep one plain number per series
# instead, and are registered as custom collectors (prometheus_client's documented extension
# point): the exposition is the same families, counters and histograms, minus the optional
# _created series.


class _CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _HistogramSeries:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # bucket i counts value <= bounds[i]
        self.sum += value


class _LoopMetric:
    """One labelled metric family of the event loop (see above); ``labels(*values)`` returns
    its series, created on first use."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        # keyed by the values as given: a StrEnum hashes and compares as its string
        self._series: dict[tuple[str, ...], object] = {}
        if not self._labelnames:
            self.labels()  # an unlabelled metric is exposed (as zero) from the start
        registry.register(self)  # type: ignore[arg-type]

    def _new(self) -> object:
        raise NotImplementedError

    def labels(self, *values: str):  # type: ignore[no-untyped-def]
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values!r}")
            series = self._series[values] = self._new()
        return series

    def _items(self) -> list[tuple[list[str], object]]:
        return [([str(v) for v in values], series) for values, series in list(self._series.items())]

    def _families(self, items: list[tuple[list[str], object]]) -> Iterator[Metric]:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(self._items())


class Counter(_LoopMetric):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _CounterSeries:
        return _CounterSeries()

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def _families(self, items: list[tuple[list[str], object]]) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in items:
            family.add_metric(values, series.value)  # type: ignore[attr-defined]
        yield family


class Histogram(_LoopMetric):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._bounds = tuple(float(b) for b in buckets if b != float("inf"))  # +Inf is always added
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _HistogramSeries:
        return _HistogramSeries(self._bounds)

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def _families(self, items: list[tuple[list[str], object]]) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, series in items:
            cumulative, buckets = 0, []
            for le, count in zip(self._le, series.counts, strict=True):  # type: ignore[attr-defined]
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(values, buckets, series.sum)  # type: ignore[attr-defined]
        yield family


class ScrapedCounter:
    """A counter whose value a component keeps itself and that is read at scrape time (what
    prometheus_client's Gauge.set_function is for gauges): its owner counts with a plain int."""

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._read = lambda: 0.0
        registry.register(self)  # type: ignore[arg-type]

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._read())


class GatewayMetrics:
    def __init__(self, max_tenant_series: int = 50) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Per-tenant series are bounded: each new tenant id would otherwise add series forever
        # (5,000 keys made a 2.7 MB page). The first max_tenant_series tenants seen keep their
        # own label, every later one is counted under OTHER_TENANTS; 0 labels them all so. The
        # admin stats endpoint has the per-tenant detail without that bound.
        self._max_tenant_series = max_tenant_series
        self._labelled_tenants: set[str] = set()
        self.requests = Counter(
            "reflex_gateway_requests",
            "Chat-completion requests by cache status (X-Reflex-Status, or 'error') and HTTP code.",
            ["status", "code"],
            registry=self.registry,
        )
        self.lookup_seconds = Histogram(
            "reflex_gateway_lookup_seconds",
            "Time spent in each cache-lookup stage.",
            ["stage"],  # l1, embed, scope (L2: does the scope hold anything?), l2, verify, total
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
        self.exact_only = Counter(
            "reflex_gateway_exact_only",
            "Requests with a question that were kept out of the semantic tiers, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.semantic_lookups = Counter(
            "reflex_gateway_semantic_lookups",
            "Semantic lookups by how far they went: empty_scope (the scope held no entry: the request went "
            "upstream without waiting for its embedding), no_candidate (none above the cosine floor), "
            "verified (candidates went to the verifier).",
            ["outcome"],
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

        # ---- lifecycle and administration (services/gateway/lifecycle.py, admin.py)
        self.tenant_requests = Counter(
            "reflex_gateway_tenant_requests",
            "Cacheable requests per tenant (a blake3 id) by cache status: the hit rate by tier and tenant.",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.invalidated = Counter(
            "reflex_gateway_invalidated_entries",
            "Entries removed by the admin API, tenant self-service or a tenant cap, by tier and reason "
            "(delete, invalidate, tenant, cap).",
            ["tier", "reason"],
            registry=self.registry,
        )
        self.evictions = Counter(
            "reflex_gateway_tenant_evictions",
            "L2 entries evicted (oldest first) because a tenant passed a cap, by which cap (entries, bytes).",
            ["cap"],
            registry=self.registry,
        )
        self.snapshots = Counter(
            "reflex_gateway_snapshots",
            "Snapshots written (create) and read (restore) by result (ok, failed, refused, skipped).",
            ["op", "result"],
            registry=self.registry,
        )
        self.snapshot_seconds = Histogram(
            "reflex_gateway_snapshot_seconds",
            "Time to write (create) or read and apply (restore) one snapshot.",
            ["op"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=self.registry,
        )
        self.snapshot_bytes = Gauge(
            "reflex_gateway_snapshot_bytes", "Size of the last snapshot written or restored.", registry=self.registry
        )
        self.snapshot_points = Gauge(
            "reflex_gateway_snapshot_entries", "Entries in the last snapshot written or restored, by tier.",
            ["tier"], registry=self.registry,
        )
        self.pending_writes = Gauge(
            "reflex_gateway_pending_cache_writes",
            "Cache writes spawned after a response was sent and not finished yet (an L2 write waits for "
            "its question's embedding); one that keeps growing means a tier is slow.",
            registry=self.registry,
        )
        self.l1_near_entries = Gauge(
            "reflex_gateway_l1_near_cache_entries",
            "Redis L1 entries this replica keeps in its near cache (l1_near.py); 0 without Redis or with it off.",
            registry=self.registry,
        )
        self.l1_near_hits = ScrapedCounter(
            "reflex_gateway_l1_near_cache_hits",
            "Redis L1 lookups this replica answered from its near cache, without a round trip.",
            registry=self.registry,
        )
        self.l1_near_live = Gauge(
            "reflex_gateway_l1_near_cache_live",
            "1 while this replica's near cache receives Redis's invalidations and serves from its copies; "
            "0 while it is off, starting, or waiting for Redis to come back.",
            registry=self.registry,
        )
        self.last_request = Gauge(
            "reflex_gateway_last_api_request_timestamp_seconds",
            "Unix time of the last API request (health, readiness and metrics excluded); idle shutdown "
            "counts from it.",
            registry=self.registry,
        )

    def tenant(self, tenant: str) -> str:
        """The label value for ``tenant``: its id while under the cap, else OTHER_TENANTS."""
        if tenant in self._labelled_tenants:
            return tenant
        if len(self._labelled_tenants) < self._max_tenant_series:
            self._labelled_tenants.add(tenant)
            return tenant
        return OTHER_TENANTS

    def render(self) -> bytes:
        return generate_latest(self.registry)
