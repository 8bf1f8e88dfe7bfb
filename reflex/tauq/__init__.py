"""Tauq: a token-efficient notation for JSON values (epistates/tauq), in pure Python.

``dumps(value) -> str`` and ``loads(text) -> value``; every failure is a ``TauqError``
(a ``ValueError`` carrying line and column). ``reflex tauq encode|decode`` wraps them.
The notation, what we kept from the reference and where we differ: ``reflex/tauq/README.md``.

In short::

    !def User id name          # a schema: field names for a run of uniform records
    ---                        # ends the schema block
    team core
    size 2
    users [
      !use User                # the rows below are User records
      1 Alice
      2 Bob
    ]
    meta { ok true ratio 0.5 tags [a b] note "quoted string" }

Guarantees: ``loads(dumps(x)) == x`` for every JSON value ``x``, with the types kept apart
(1 vs 1.0 vs True, -0.0), any string as a key, integers of any size, key order kept;
``loads`` reads the reference formatter's output (0.2.0) to the same value; ``loads`` on
arbitrary text returns or raises ``TauqError`` in linear time, never recursing deeper
than ``MAX_DEPTH`` levels. No syntax was added to the notation: every fix is a choice of
the encoder within it, plus reading integers exactly.
"""

from reflex.tauq.decoder import loads
from reflex.tauq.encoder import dumps
from reflex.tauq.errors import TauqError
from reflex.tauq.lexical import MAX_DEPTH

__all__ = ["MAX_DEPTH", "TauqError", "dumps", "loads"]
