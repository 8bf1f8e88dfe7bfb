"""Reflex: a verified semantic cache for LLM responses.

This package holds what the services share: settings (``reflex.config``), the command
line (``reflex.cli``), the Tauq codec, token accounting, the eval harness and the
generated gRPC contracts (``reflex.<service>.v1``, made by scripts/gen-protos.sh).
The services themselves live in ``services/``.
"""

__version__ = "0.1.0"
