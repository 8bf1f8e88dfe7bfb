"""The model-service suite uses the shared real-model fixtures (tests/support/models.py)."""

from tests.support.models import (  # noqa: F401  (fixtures)
    embedder_server,
    minilm_model,
    model_loop,
    tiny_cross_encoder_dir,
    verifier_server,
)
