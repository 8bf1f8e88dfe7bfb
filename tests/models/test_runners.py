"""The model runners without gRPC: pooling read from the model directory, device choice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from reflex.settings import ModelServiceSettings, ModelSettings
from services.model_server.torch_runtime import available_cores, choose_runtime
from services.embedder.model import EmbeddingModel, default_model_path
from tests.support.models import cosine, model_settings

TEXTS = ["How do I center a div in CSS?", "A second, somewhat longer sentence to pool over.", "x"]


def copy_with_pooling(dst: Path, **modes: bool) -> Path:
    """all-MiniLM-L6-v2 with other pooling modes switched on (weights linked, not copied)."""
    src = default_model_path()
    dst.mkdir()
    for item in src.iterdir():
        if item.is_file():
            os.symlink(item, dst / item.name)
    (dst / "1_Pooling").mkdir()
    config = json.loads((src / "1_Pooling" / "config.json").read_text())
    config.update({f"pooling_mode_{k}": v for k, v in modes.items()})
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return dst


def embed(model: EmbeddingModel, texts: list[str]) -> list:
    return list(model.forward(model.collate(model.tokenize(texts))))


@pytest.mark.parametrize(
    "modes",
    [
        {"mean_tokens": False, "cls_token": True},
        {"mean_tokens": True, "max_tokens": True},
        {"mean_tokens": False, "mean_sqrt_len_tokens": True},
    ],
    ids=["cls", "mean+max", "mean_sqrt_len"],
)
def test_pooling_comes_from_the_model_directory(tmp_path: Path, modes: dict[str, bool]) -> None:
    path = copy_with_pooling(tmp_path / "model", **modes)
    # Pooling is the same code whatever the backend; fp32 torch makes it comparable exactly.
    ours = EmbeddingModel(path, model_settings(embedder_backend="torch").model)
    reference = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert ours.dimension == reference.shape[1] == 384 * sum(modes.values())
    for got, want in zip(embed(ours, TEXTS), reference, strict=True):
        assert cosine(got, want) > 0.999


def test_unsupported_modules_are_refused(tmp_path: Path) -> None:
    path = copy_with_pooling(tmp_path / "model")
    modules = json.loads((default_model_path() / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    os.unlink(path / "modules.json")
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        EmbeddingModel(path, model_settings().model)


def test_cpu_runtime_is_fp32_with_deliberate_threads() -> None:
    before = torch.get_num_threads()
    try:
        runtime = choose_runtime(ModelSettings(device="cpu", torch_threads=1))
        assert (runtime.device.type, runtime.dtype, runtime.threads) == ("cpu", torch.float32, 1)
        assert torch.get_num_threads() == 1
        default = choose_runtime(ModelSettings(device="cpu"))
        assert default.threads == min(available_cores(), 8)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="REFLEX_DEVICE"):
        choose_runtime(ModelSettings(device="cuda"))


def test_model_path_must_be_a_local_model_directory(tmp_path: Path) -> None:
    from services.embedder.model import load_embedding_model

    with pytest.raises(FileNotFoundError, match="REFLEX_MODEL_PATH"):
        load_embedding_model(ModelServiceSettings.build(model_path=tmp_path))  # exists, but holds no model
