"""Reflex: a verified semantic cache for LLM responses.

This package is the bottom layer, the leaves that every service may use and that import
nothing above them: typed settings (``reflex.settings``), the Tauq codec, token accounting,
the cache entry and the tier contracts, the shutdown-signal helper, and the generated gRPC
contracts (``reflex.<service>.v1``, made by scripts/gen-protos.sh). The services live in
``services/``; the commands that compose them (the ``reflex`` CLI, ``reflex serve``,
``reflex up``, ``reflex eval``) in ``commands/``.
"""

__version__ = "0.1.0"
