"""The CPU inference backends (REFLEX_EMBEDDER_BACKEND / REFLEX_VERIFIER_BACKEND) against eager
torch fp32, the ONNX export cache, and the CUDA-graph padding (checked on the CPU; the graphs
themselves run in tests/models/test_gpu.py).

Tolerances: the ONNX fp32 export must equal torch (same weights, fused kernels: 1e-4); int8 may
move outputs, so it is held to looser bounds here and to `reflex eval` for what matters (README,
Performance)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reflex.settings import ModelServiceSettings
from services.embedder.model import EmbeddingModel, default_model_path
from services.model_server.inference import (
    GRAPH_ROW_BUCKETS,
    CudaGraphEncoder,
    OnnxEncoder,
    TorchEncoder,
)
from services.model_server.onnx_export import _fuse, cache_key
from services.verifier.cross_encoder import CrossEncoderModel
from tests.support.models import cosine

TEXTS = [
    "How do I center a div in CSS?",
    "What's the CSS to center a div horizontally and vertically?",
    "The quick brown fox jumps over the lazy dog. " * 30,  # truncated at 256 tokens
    "x",
]
PAIRS = [(TEXTS[0], t) for t in TEXTS]


def settings(cache: Path, **overrides: object) -> ModelServiceSettings:
    return ModelServiceSettings.build(torch_threads=2, model_cache_path=cache, **overrides)


def run(model: EmbeddingModel | CrossEncoderModel, items: list) -> np.ndarray:
    return np.asarray(model.forward(model.collate(model.tokenize(items))))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def torch_embedder(cache_dir: Path) -> EmbeddingModel:
    return EmbeddingModel(default_model_path(), settings(cache_dir, embedder_backend="torch").model)


# torch-int8 moves vectors the most (a one-character text to cosine 0.90): it is offered, never
# the default (README, Performance).
@pytest.mark.parametrize(("backend", "min_cosine"), [("onnx", 0.99999), ("onnx-int8", 0.97), ("torch-int8", 0.85)])
def test_embedder_backends_match_torch_fp32(cache_dir: Path, torch_embedder: EmbeddingModel, backend: str,
                                            min_cosine: float) -> None:
    model = EmbeddingModel(default_model_path(), settings(cache_dir, embedder_backend=backend).model)
    assert model.runtime.dtype_name == backend  # what Info reports, and what reflex eval's cache keys on
    got, want = run(model, TEXTS), run(torch_embedder, TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384)
    for a, b in zip(got, want, strict=True):
        assert cosine(a, b) > min_cosine
        assert abs(float(np.dot(a, a)) - 1.0) < 1e-4  # unit length, whatever the backend
    # Rows of a padded batch equal the same rows alone: the export honours the attention mask.
    # int8 quantizes activations with one scale per batch, so there a row also depends
    # (slightly) on its batch-mates.
    alone = np.stack([run(model, [t])[0] for t in TEXTS])
    if backend == "onnx":
        assert np.abs(alone - got).max() < 1e-4
    else:
        assert min(cosine(a, b) for a, b in zip(alone, got, strict=True)) > min_cosine


@pytest.mark.parametrize(("backend", "tolerance"), [("onnx", 1e-4), ("onnx-int8", 0.15), ("torch-int8", 0.2)])
def test_verifier_backends_match_torch_fp32(cache_dir: Path, tiny_cross_encoder_dir: Path, backend: str,
                                            tolerance: float) -> None:
    reference = CrossEncoderModel(tiny_cross_encoder_dir, settings(cache_dir, verifier_backend="torch").model)
    model = CrossEncoderModel(tiny_cross_encoder_dir, settings(cache_dir, verifier_backend=backend).model)
    assert model.runtime.dtype_name == backend
    got, want = run(model, PAIRS), run(reference, PAIRS)
    assert got.shape == (len(PAIRS),)
    assert got == pytest.approx(want, abs=tolerance)


def test_onnx_export_is_cached_per_weights(cache_dir: Path, tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    first = CrossEncoderModel(tiny_cross_encoder_dir, settings(cache_dir, verifier_backend="onnx-int8").model)
    assert isinstance(first.encoder, OnnxEncoder)
    path = first.encoder.path
    assert path.is_file() and path.is_relative_to(cache_dir)
    stamp = path.stat().st_mtime_ns
    again = CrossEncoderModel(tiny_cross_encoder_dir, settings(cache_dir, verifier_backend="onnx-int8").model)
    assert again.encoder.path == path and path.stat().st_mtime_ns == stamp  # read back, not exported again
    # Other weights, another entry: a stale export is never served for new weights.
    copy = tmp_path / "changed"
    copy.mkdir()
    for item in tiny_cross_encoder_dir.iterdir():
        os.symlink(item, copy / item.name)
    os.unlink(copy / "config.json")
    (copy / "config.json").write_text((tiny_cross_encoder_dir / "config.json").read_text().replace("{", '{"x": 1,', 1))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert cache_key(copy, output="logits", input_names=names) != cache_key(
        tiny_cross_encoder_dir, output="logits", input_names=names)
    # No temporary file is left behind.
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("which", ["embedder", "verifier"])
def test_the_fp32_backend_runs_the_fused_graph(cache_dir: Path, tiny_cross_encoder_dir: Path, which: str) -> None:
    """`onnx` serves ONNX Runtime's fused BERT graph (one Attention node per layer, exported with
    eager attention), which the match tests above hold to torch's outputs; the export keeps the
    module's own attention for torch, and int8 quantizes the unfused export."""
    import onnx

    build = (lambda b: EmbeddingModel(default_model_path(), settings(cache_dir, embedder_backend=b).model)) \
        if which == "embedder" else \
        (lambda b: CrossEncoderModel(tiny_cross_encoder_dir, settings(cache_dir, verifier_backend=b).model))
    model = build("onnx")
    assert isinstance(model.encoder, OnnxEncoder) and model.encoder.path.name == "model.fused.onnx"
    ops = [n.op_type for n in onnx.load(str(model.encoder.path)).graph.node]
    assert ops.count("Attention") == model.model.config.num_hidden_layers
    assert model.model.config._attn_implementation == "sdpa"  # put back after the export
    int8 = build("onnx-int8").encoder
    assert isinstance(int8, OnnxEncoder) and int8.path.name == "model.int8.onnx"
    assert "Attention" not in {n.op_type for n in onnx.load(str(int8.path)).graph.node}


def test_fusions_that_change_the_outputs_are_not_served(cache_dir: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A fused graph that computes something else is caught against the export's outputs, and
    the export is served instead. Here the Attention fusion is told 24 heads of a 768 hidden
    size where MiniLM has 12 of 384: ONNX Runtime only warns, fuses every layer, and the
    outputs move by several units (a wrong head count with the right hidden size it refuses)."""
    import onnx

    model = EmbeddingModel(default_model_path(), settings(cache_dir, embedder_backend="onnx").model)
    export = model.encoder.path.with_name("model.onnx")
    inputs = {"input_names": model.encoder.input_names, "pad_id": model.tokenizer.pad_token_id or 0}
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    with caplog.at_level("WARNING", logger="reflex.onnx"):
        _fuse(export, good, num_heads=12, hidden_size=384, **inputs)
        assert "changed the outputs" not in caplog.text
        _fuse(export, bad, num_heads=24, hidden_size=768, **inputs)
    assert [n.op_type for n in onnx.load(str(good)).graph.node].count("Attention") == 6
    assert "changed the outputs" in caplog.text
    assert bad.read_bytes() == export.read_bytes()


def test_an_unwritable_cache_falls_back_to_a_temporary_directory(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    model = CrossEncoderModel(tiny_cross_encoder_dir, settings(blocked / "cache", verifier_backend="onnx").model)
    assert isinstance(model.encoder, OnnxEncoder) and not model.encoder.path.is_relative_to(blocked)


def test_cpu_backends_are_refused_off_the_cpu() -> None:
    from services.model_server.inference import build_encoder
    from services.model_server.torch_runtime import Runtime

    runtime = Runtime(torch.device("meta"), torch.float32, None, "onnx-int8")
    with pytest.raises(ValueError, match="CPU only"):
        build_encoder(torch.nn.Linear(2, 2), output="logits", source=Path("."), input_names=["input_ids"],
                      runtime=runtime, cache_path=None, pad_id=0, max_tokens=8)


def test_cuda_graph_padding_keeps_the_real_rows(torch_embedder: EmbeddingModel) -> None:
    """The padding CudaGraphEncoder applies (extra rows and columns) leaves the real rows'
    outputs unchanged: checked on the CPU with the eager module, so no GPU is needed."""
    eager = TorchEncoder(torch_embedder.model, "last_hidden_state", torch.device("cpu"))
    graphed = CudaGraphEncoder(eager, pad_id=0, max_tokens=torch_embedder.max_tokens,
                               input_names=["input_ids", "attention_mask", "token_type_ids"])
    batch = torch_embedder.collate(torch_embedder.tokenize(TEXTS[:2] + TEXTS[3:]))
    rows, width = batch["input_ids"].shape
    assert graphed.bucket(rows, width) == (4, next(b for b in graphed.lengths if b >= width))
    assert graphed.bucket(GRAPH_ROW_BUCKETS[-1] + 1, width) is None  # large batches run eager
    assert graphed.bucket(1, torch_embedder.max_tokens + 1) is None
    padded = graphed.pad(batch, 4, 64)
    assert padded["input_ids"].shape == (4, 64) and padded["attention_mask"][rows:, 0].eq(1).all()
    want = eager(batch)
    got = eager(padded)[:rows, :width]
    mask = batch["attention_mask"].bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-4)


def test_stale_cache_entries_of_the_same_model_are_pruned(tmp_path: Path, tiny_cross_encoder_dir: Path) -> None:
    from services.model_server.onnx_export import STALE_AFTER_S

    cache = tmp_path / "cache"
    stale, recent, other = (cache / name for name in (f"{tiny_cross_encoder_dir.name}-old",
                                                      f"{tiny_cross_encoder_dir.name}-recent", "another-model-old"))
    for d in (stale, recent, other):
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x")
    long_ago = os.stat(stale).st_mtime - STALE_AFTER_S - 60
    os.utime(stale, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    CrossEncoderModel(tiny_cross_encoder_dir, settings(cache, verifier_backend="onnx").model)
    assert not stale.exists()  # same model name, unused for long: removed
    assert recent.exists() and other.exists()  # used lately, or another model: kept


def test_two_models_exported_at_once_in_one_process(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    # `reflex serve` loads the embedder and the verifier on two threads of one process, and on a
    # new machine both export at once; torch's exporter keeps process-wide state and refused the
    # second ("GLOBALS.in_onnx_export must be False"), so the one command failed on its first run.
    import threading

    copies = []
    for n in range(2):
        copy = tmp_path / f"weights-{n}"
        copy.mkdir()
        for item in tiny_cross_encoder_dir.iterdir():
            if item.name != "config.json":
                os.symlink(item, copy / item.name)
        # other config bytes, so each copy has its own cache entry and both export
        (copy / "config.json").write_text((tiny_cross_encoder_dir / "config.json").read_text().replace(
            "{", f'{{"copy": {n},', 1))
        copies.append(copy)
    start, failures, models = threading.Barrier(len(copies)), [], []

    def load(path: Path) -> None:
        start.wait()
        try:
            models.append(CrossEncoderModel(path, settings(tmp_path / "cache", verifier_backend="onnx").model))
        except Exception as exc:  # noqa: BLE001 - what the test reports
            failures.append(exc)

    threads = [threading.Thread(target=load, args=(c,)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    assert len({m.encoder.path for m in models}) == 2
    expected = run(models[0], PAIRS)
    assert np.allclose(run(models[1], PAIRS), expected, atol=1e-5)
