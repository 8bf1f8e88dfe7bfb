"""Which part of a user message is the question.

A user message is usually just the question. Some clients wrap it: Claude Code puts a
``<system-reminder>`` block beside it, Codex an ``<environment_context>`` item, and Aider,
for models it does not know, appends its edit-format rules to the user's own words. The
semantic tiers must compare what the user asked, and everything around it must still match
exactly (it goes into the context hash), so a wrapper never turns two different requests into
one hit.

The rule for a wrapped message (``asked_part(text, elsewhere)``): a leading or trailing run of
whole paragraphs (blocks separated by a blank line) that the same request also carries,
verbatim and in one piece, somewhere else (its system prompt, an earlier turn, a trailing
instruction) is boilerplate the client repeats, not what this turn asks. Aider, for one,
writes its rules into the system prompt and, for models it does not know, appends the same
text to the user message. The rule is general and needs no client's wording: it strips only
what the request itself proves is repeated, and a message with nothing repeated (a long
question, a pasted document) stays whole. Without ``elsewhere`` nothing is stripped.

Why this never makes a false hit on its own: whatever is not the question is returned in
``surroundings``, verbatim and with its position (the prefix's length leads), and the adapters
put it into the context hash. Two messages with equal surroundings are therefore equal but for
their questions, whichever texts the boilerplate was found in; what is left to compare is the
asked part, which the verifier judges as it does any plain question. Stripping can only cost
hits (a rewording that also changes the boilerplate lands in another scope), never add a wrong
one.

Measured on Aider 0.86.2's real bodies for a model it does not know (3 kB of rules after the
user's words): the shipped verifier scored 7 true rewordings 0.004-0.019 on the whole message
(cosine >= 0.97, as high as for unrelated edits); on the asked part, 4 of them pass the 0.92
threshold (0.93-0.99; the other 3 score as their bare words do), and 8 unrelated edit requests
in the same scope all stay below it (at most 0.61).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# A blank line (only spaces or tabs on it) ends a paragraph. Clients join their wrapper to the
# user's words this way (Aider: question + "\n\n" + rules).
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True, slots=True)
class AskedPart:
    question: str  # what the semantic tiers embed and verify
    surroundings: str  # the rest of the message, kept in the context hash verbatim


def asked_part(text: str, elsewhere: Iterable[str] = ()) -> AskedPart:
    """Split a user message's text into the asked part and what surrounds it.

    ``elsewhere``: the other texts of the same request (system prompt, other messages), all
    of which are in the request's context. A leading or trailing run of paragraphs found
    verbatim in one of them is boilerplate; the question is what lies between, trimmed of
    whitespace. With nothing found (or no ``elsewhere``), the whole text is the question and
    ``surroundings`` is empty, as for any plain message.
    """
    others = [other for other in elsewhere if other]
    if not others:
        return AskedPart(question=text, surroundings="")
    breaks = list(_PARAGRAPH_BREAK.finditer(text))
    # Cuts that leave only whitespace on the stripped side are no cuts (and would break the
    # binary searches' monotonicity): that whitespace goes with the surroundings anyway.
    starts = [m.end() for m in breaks if text[m.end():].strip()]  # where a later paragraph begins
    end = _first(starts, lambda c: _repeated(text[c:], others), default=len(text))
    ends = [m.start() for m in breaks if m.start() < end and text[: m.start()].strip()]  # an earlier one ends
    start = _last(ends, lambda c: _repeated(text[:c], others), default=0)
    span = text[start:end]
    question = span.strip()
    if (start, end) == (0, len(text)) or not question:
        # nothing repeated, or nothing but repeats (the whole turn sent again): all of it is asked
        return AskedPart(question=text, surroundings="")
    begin = start + len(span) - len(span.lstrip())
    return AskedPart(question=question, surroundings=_surroundings(text[:begin], text[begin + len(question):]))


def _repeated(part: str, others: list[str]) -> bool:
    return any(part in other for other in others)


def _first(cuts: list[int], found: Callable[[int], bool], *, default: int) -> int:
    """The earliest cut whose tail is repeated. A tail's own tails are then repeated too (a
    substring's suffix is a substring), so the answer is a threshold: binary search it."""
    low, high = 0, len(cuts)  # invariant: cuts[high:] all found, cuts[:low] all not
    while low < high:
        mid = (low + high) // 2
        if found(cuts[mid]):
            high = mid
        else:
            low = mid + 1
    return cuts[low] if low < len(cuts) else default


def _last(cuts: list[int], found: Callable[[int], bool], *, default: int) -> int:
    """The latest cut whose head is repeated (the mirror of ``_first``: a head's heads are)."""
    low, high = 0, len(cuts)  # invariant: cuts[:low] all found, cuts[high:] all not
    while low < high:
        mid = (low + high) // 2
        if found(cuts[mid]):
            low = mid + 1
        else:
            high = mid
    return cuts[low - 1] if low > 0 else default


def _surroundings(prefix: str, suffix: str) -> str:
    """Prefix and suffix in one string that tells them apart: the prefix's length leads, so no
    two different (prefix, suffix) pairs give the same string (a plain join would let the
    boundary move, e.g. ("a", "bc") and ("ab", "c"))."""
    return f"{len(prefix)}:{prefix}{suffix}"
