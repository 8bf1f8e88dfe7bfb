"""The CUDA path (bf16/fp16) against the CPU fp32 path, within tolerance, on the models we
ship (all-MiniLM-L6-v2 and the trained verifier in services/verifier/model/). Needs a GPU."""

from __future__ import annotations

import pytest
import torch

from reflex.settings import ModelSettings
from services.embedder.model import EmbeddingModel, default_model_path
from services.verifier.cross_encoder import CrossEncoderModel, resolve_model_path
from tests.support.models import cosine, model_settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = [
    "How do I center a div in CSS?",
    "What's the CSS to center a div horizontally and vertically?",
    "The quick brown fox jumps over the lazy dog. " * 30,
    "x",
]
PAIRS = [(TEXTS[0], t) for t in TEXTS]


def run(model: EmbeddingModel | CrossEncoderModel, items: list) -> list:
    return list(model.forward(model.collate(model.tokenize(items))))


def test_cuda_embeddings_match_cpu() -> None:
    path = default_model_path()
    cpu = EmbeddingModel(path, model_settings(device="cpu", embedder_backend="torch").model)  # fp32 reference
    gpu = EmbeddingModel(path, model_settings(device="cuda").model)
    assert gpu.runtime.dtype in (torch.bfloat16, torch.float16)
    for a, b in zip(run(cpu, TEXTS), run(gpu, TEXTS), strict=True):
        assert cosine(a, b) > 0.995


def test_cuda_verifier_scores_match_cpu() -> None:
    # The shipped checkpoint, not a random head: its trained logits are what bf16 must keep.
    # verifier_path=None whatever REFLEX_RERANKER_PATH says; a missing checkpoint fails here.
    path = resolve_model_path(ModelSettings(verifier_path=None))
    cpu = CrossEncoderModel(path, model_settings(device="cpu", verifier_backend="torch").model)
    gpu = CrossEncoderModel(path, model_settings(device="cuda").model)
    assert gpu.runtime.dtype in (torch.bfloat16, torch.float16)
    assert run(gpu, PAIRS) == pytest.approx(run(cpu, PAIRS), abs=0.03)


def test_cuda_graphs_match_eager_and_are_used_for_small_batches() -> None:
    """REFLEX_CUDA_GRAPHS: small batches replay recorded graphs (padded to a bucket) and give
    the eager result; a batch over the largest row bucket runs eager."""
    from services.model_server.inference import GRAPH_ROW_BUCKETS, CudaGraphEncoder

    path = default_model_path()
    eager = EmbeddingModel(path, model_settings(device="cuda").model)
    graphed = EmbeddingModel(path, model_settings(device="cuda", cuda_graphs=True).model)
    assert isinstance(graphed.encoder, CudaGraphEncoder)
    graphed.warm_up()  # on this thread, which then replays: graph trees are per thread
    for a, b in zip(run(eager, TEXTS), run(graphed, TEXTS), strict=True):
        assert cosine(a, b) > 0.999
    assert graphed.encoder.graphed_calls > 0
    before = graphed.encoder.graphed_calls
    run(graphed, ["short text"] * (GRAPH_ROW_BUCKETS[-1] + 1))
    assert graphed.encoder.graphed_calls == before


def test_cuda_graphs_for_the_verifier_match_eager() -> None:
    path = resolve_model_path(ModelSettings(verifier_path=None))
    eager = CrossEncoderModel(path, model_settings(device="cuda").model)
    graphed = CrossEncoderModel(path, model_settings(device="cuda", cuda_graphs=True).model)
    graphed.warm_up()
    assert run(graphed, PAIRS) == pytest.approx(run(eager, PAIRS), abs=0.01)
