"""Which cache entries an invalidation, a stats query or a cap is about: one value object that L1
and both L2 backends read the same way (a leaf: no store imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Selection:
    """Which points an invalidation (or a stats or caps scan) is about.

    ``tenant``, ``model`` and ``context_hash`` are filtered inside the store (indexed keyword
    fields); ``older_than_secs`` and ``question_contains`` are checked on each scanned point, since
    neither is an indexed condition and both are administrative, not on a request's path.
    """

    tenant: str | None = None
    model: str | None = None
    context_hash: str | None = None
    older_than_secs: float | None = None
    question_contains: str | None = None

    def keywords(self) -> dict[str, str]:
        """The indexed conditions, by the name the stores index them under."""
        wanted = {"tenant": self.tenant, "model": self.model, "context_hash": self.context_hash}
        return {key: value for key, value in wanted.items() if value is not None}

    def matches(
        self, *, tenant: str, model: str | None, context_hash: str | None, created_at: float, question: str | None,
        now: float,
    ) -> bool:
        if self.tenant is not None and tenant != self.tenant:
            return False
        if self.model is not None and model != self.model:
            return False
        if self.context_hash is not None and context_hash != self.context_hash:
            return False
        if self.older_than_secs is not None and created_at > now - self.older_than_secs:
            return False
        if self.question_contains is not None:
            return self.question_contains.casefold() in (question or "").casefold()
        return True

    @property
    def needs_entry(self) -> bool:
        """Whether matching needs the entry itself (its age or question), not only its tags."""
        return self.older_than_secs is not None or self.question_contains is not None

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.tenant, self.model, self.context_hash, self.older_than_secs,
                                       self.question_contains))
