"""Real model servers for tests: the embedder and verifier gRPC services, in-process, on port 0.

Loading a model costs seconds on 2 cores, so the servers (and the loaded models) are
session-scoped and run on a ``LoopThread``: any test, sync or async, on any event loop, reaches
them through their ``target`` with the real gRPC clients. Import the fixtures into a
conftest.py::

    from tests.support.models import embedder_server, verifier_server  # noqa: F401

Until the trained verifier exists (services/verifier/model/), ``build_tiny_cross_encoder``
makes a small ``BertForSequenceClassification`` from the MiniLM weights: a real cross-encoder
architecture with an untrained head, good for plumbing, not for deciding paraphrases.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from reflex.settings import ModelServiceSettings
from services.embedder.main import start_embedder_server
from services.embedder.model import EmbeddingModel, default_model_path, load_embedding_model
from services.model_server.grpc_server import ModelServer
from services.verifier.cross_encoder import CrossEncoderModel
from services.verifier.cross_encoder import default_model_path as shipped_verifier_path
from services.verifier.main import start_verifier_server
from tests.support.loop_thread import LoopThread


def build_tiny_cross_encoder(tmp_dir: Path, *, num_layers: int = 2, num_labels: int = 1, seed: int = 0) -> Path:
    """Write a small cross-encoder checkpoint (MiniLM's first ``num_layers`` layers, a seeded
    random head) into ``tmp_dir`` and return it. Loads with AutoModelForSequenceClassification."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    source = default_model_path()
    config = BertConfig.from_pretrained(source, local_files_only=True)
    config.num_hidden_layers = num_layers
    config.num_labels = num_labels
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    # strict=False: the encoder's layers beyond num_layers are simply not copied.
    encoder = BertModel.from_pretrained(source, local_files_only=True)
    missing, _ = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    assert not missing, f"tiny cross-encoder left weights uninitialised: {missing}"
    # BERT's default head init (std 0.02) puts every logit near 0, so every pair scores ~0.5;
    # a wider head spreads the probabilities and makes order and rounding mistakes visible.
    torch.nn.init.normal_(model.classifier.weight, std=0.2)
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp_dir)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(tmp_dir)
    return tmp_dir


def model_settings(**overrides: Any) -> ModelServiceSettings:
    """Settings for an in-process model server; small batches keep CPU use modest."""
    return ModelServiceSettings.build(**{"torch_threads": 2, **overrides})


class GatedBackend:
    """Wraps a real model runner; ``forward`` blocks while the gate is closed.

    Makes 'the model is busy' deterministic for back-pressure, deadline and drain tests
    without sleeping: ``close_gate()``, send calls, wait for ``entered``, ``open_gate()``.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()  # set when a forward pass is waiting at the gate
        self._gate = threading.Event()
        self._gate.set()

    def close_gate(self) -> None:
        self.entered.clear()
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def forward(self, batch: Any) -> Any:
        self.entered.set()
        if not self._gate.wait(60):
            raise TimeoutError("test gate never opened")
        return self.inner.forward(batch)

    def __getattr__(self, name: str) -> Any:  # tokenize, collate, name, dimension, runtime, ...
        return getattr(self.inner, name)


class BrokenForward(GatedBackend):
    """Every forward pass raises while ``broken`` is set (as a faulted GPU would); clear it
    and the real model answers again."""

    def __init__(self, inner: Any, *, broken: bool = True) -> None:
        super().__init__(inner)
        self.broken = broken

    def forward(self, batch: object) -> object:
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().forward(batch)


@dataclass
class RunningServer:
    """A model server running on a LoopThread, as the tests see it."""

    server: ModelServer[Any]
    loop_thread: LoopThread

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.server.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def stop(self, grace: float = 0.0) -> None:
        self.loop_thread.run(self.server.stop(grace))


def run_embedder(loop_thread: LoopThread, settings: ModelServiceSettings, model: EmbeddingModel | None = None) -> RunningServer:
    load = (lambda _settings: model) if model is not None else None
    server = loop_thread.run(start_embedder_server(settings, 0, load_backend=load), timeout=180)
    return RunningServer(server, loop_thread)


def run_verifier(loop_thread: LoopThread, settings: ModelServiceSettings, model: CrossEncoderModel | None = None) -> RunningServer:
    load = (lambda _settings: model) if model is not None else None
    server = loop_thread.run(start_verifier_server(settings, 0, load_backend=load), timeout=180)
    return RunningServer(server, loop_thread)


def verifier_model_dir(tmp_root: Path) -> Path:
    """The trained verifier when it is there, else a tiny cross-encoder built under tmp_root."""
    shipped = shipped_verifier_path()
    if (shipped / "config.json").is_file():
        return shipped
    return build_tiny_cross_encoder(tmp_root / "tiny-cross-encoder")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def model_loop() -> Iterator[LoopThread]:
    loop_thread = LoopThread("model-servers")
    yield loop_thread
    loop_thread.close()


@pytest.fixture(scope="session")
def minilm_model() -> EmbeddingModel:
    """all-MiniLM-L6-v2, loaded once per session (servers in tests can share it)."""
    return load_embedding_model(model_settings())


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def embedder_server(model_loop: LoopThread, minilm_model: EmbeddingModel) -> Iterator[RunningServer]:
    """The real embedder (all-MiniLM-L6-v2) on 127.0.0.1:<free port>, for the whole session."""
    running = run_embedder(model_loop, model_settings(), minilm_model)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def verifier_server(model_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The verifier on 127.0.0.1:<free port>: the trained model when shipped, else a tiny one."""
    path = verifier_model_dir(tmp_path_factory.mktemp("verifier"))
    running = run_verifier(model_loop, model_settings(reranker_path=path))
    yield running
    running.stop()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float(torch.nn.functional.cosine_similarity(ta, tb, dim=0))
