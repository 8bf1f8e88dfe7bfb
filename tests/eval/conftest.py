"""The eval harness runs through the suite's shared real model servers (tests/support/models.py)."""

from tests.support.models import (  # noqa: F401  (fixtures)
    embedder_server,
    minilm_model,
    model_loop,
    verifier_server,
)
