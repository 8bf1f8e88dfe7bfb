"""Who is asking (tenant, from the one credential used), what exactly they ask (L1 key), and in
which context (L2 scope).

All three are blake3 hashes, so raw API keys and prompts never become identifiers.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
from dataclasses import dataclass, field

from blake3 import blake3

from reflex.tiers import L2Scope
from services.gateway.protocols.base import ParsedRequest

ANONYMOUS_TENANT = "anonymous"

AUTHORIZATION = "Authorization"
X_API_KEY = "x-api-key"


@dataclass(frozen=True, slots=True)
class Credential:
    """The one credential a request is filed under, and the only one forwarded upstream."""

    header: str  # AUTHORIZATION or X_API_KEY
    value: str  # the header's value as sent (forwarded as it is)
    secret: str  # what identifies the tenant: a Bearer token, or the whole value otherwise


def credential_from_headers(headers: Mapping[str, str], *, native: str = AUTHORIZATION) -> Credential | None:
    """The caller's credential: any non-empty ``Authorization`` or ``x-api-key``.

    Any credential identifies a tenant, whatever its scheme (``Bearer``, ``Token``, ``Basic``, a
    tab instead of a space): only a request that sends none is anonymous, so a credential the
    gateway does not understand can never file an answer where keyless callers read it. When
    both headers are sent, the protocol's own one wins (``Authorization`` for the OpenAI APIs,
    ``x-api-key`` for Anthropic's), and the other is neither used nor forwarded.
    """
    order = (native, X_API_KEY if native == AUTHORIZATION else AUTHORIZATION)
    for header in order:
        value = headers.get(header, "").strip()
        if not value:
            continue
        scheme, *token = value.split(None, 1)  # any whitespace separates scheme and token
        if header == AUTHORIZATION and scheme.lower() == "bearer" and token:
            return Credential(header, value, token[0].strip())
        return Credential(header, value, value)
    return None


def api_key_from_headers(headers: Mapping[str, str], *, native: str = AUTHORIZATION) -> str | None:
    """The secret that names the caller's tenant (see credential_from_headers), or None."""
    credential = credential_from_headers(headers, native=native)
    return credential.secret if credential is not None else None


def tenant_id(api_key: str | None) -> str:
    """blake3 of the key (hex); every keyless caller shares the ``anonymous`` tenant."""
    if api_key is None:
        return ANONYMOUS_TENANT
    return blake3(api_key.encode("utf-8")).hexdigest()


def l1_key(tenant: str, protocol: str, canonical: bytes) -> str:
    # The tenant and the protocol are length-prefixed so that no (tenant, protocol, request)
    # triple can collide with another by moving bytes across a boundary.
    h = blake3(len(tenant).to_bytes(4, "big"))
    h.update(tenant.encode("utf-8"))
    h.update(len(protocol).to_bytes(4, "big"))
    h.update(protocol.encode("utf-8"))
    h.update(canonical)
    return h.hexdigest()


@dataclass
class RequestKeys:
    """Everything the cascade needs to look a request up and to store its answer.

    The context hash is computed on first use: an exact hit never needs it. Not frozen only
    because a frozen dataclass's __init__ costs every request a few microseconds; nothing
    assigns to it after construction.
    """

    tenant: str
    model: str
    l1_key: str
    question: str | None  # None: not eligible for L2/L3
    request: ParsedRequest = field(repr=False, compare=False)

    @classmethod
    def of(cls, tenant: str, request: ParsedRequest) -> "RequestKeys":
        return cls(
            tenant=tenant,
            model=request.model,
            l1_key=l1_key(tenant, request.protocol, request.canonical),
            question=request.question,
            request=request,
        )

    @functools.cached_property
    def context_hash(self) -> str | None:
        """blake3 of the context (everything but the question); None when not eligible."""
        if self.question is None:
            return None
        return blake3(self.request.context).hexdigest()

    @property
    def scope(self) -> L2Scope | None:
        """The L2 scope of this request; None when it may only use L1."""
        context_hash = self.context_hash
        if self.question is None or context_hash is None:
            return None
        return L2Scope(tenant=self.tenant, model=self.model, context_hash=context_hash)
