"""Export an encoder to ONNX once, fuse it and quantize it to int8, and cache the results on disk.

The cache holds one directory per (weights, recipe, versions): ``<name>-<key>/model.onnx`` (the
export), ``model.fused.onnx`` (what the fp32 backend runs) and ``model.int8.onnx``. The key
hashes the model directory's config.json and weight files, the output taken, the input names,
this module's recipe version and the torch and ONNX Runtime versions, so new weights, a changed
recipe or an upgrade export afresh instead of reading a stale file.
Files are written under a temporary name and renamed into place, so two processes loading the
same model at once (``reflex up --embedders 2``) never read a half-written file; at worst both
export it. Nothing is downloaded: the export traces the module already loaded from disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import blake3
import numpy as np
import torch

log = logging.getLogger("reflex.onnx")

# Bump when the export or the quantization below changes: old cache entries are then ignored.
RECIPE_VERSION = 2
# The opset of the TorchScript exporter's BERT graphs; ONNX Runtime >= 1.16 runs it.
OPSET = 17
# How far the fused graph's outputs may move from the export's before the export is served
# instead: fp32 fusions moved MiniLM's by 2-6e-6 (a cosine or a logit moves less than that).
FUSED_RTOL, FUSED_ATOL = 1e-3, 1e-4
# Entries of the same model directory name not used for this long are deleted when another is
# written: retraining a checkpoint makes a new entry (~200 MB with its three files) each time, and
# nothing else would ever remove the old ones. A week keeps what any running replica still uses.
STALE_AFTER_S = 7 * 24 * 3600
# Files of a model directory that decide the exported graph: the architecture and the weights
# (not the tokenizer, nor other JSON a model directory may carry, such as the verifier's
# decision weights, which are applied after the model).
_GRAPH_FILES = ("config.json",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# torch's TorchScript exporter keeps its state in a process-wide global (torch.onnx GLOBALS) and
# refuses a second export while one runs ("GLOBALS.in_onnx_export must be False"). `reflex
# serve` loads the embedder and the verifier on two threads of one process, so on a machine
# with no cached export both exported at once and the second model failed to start. One lock
# per process, like the state it guards; other processes write under their own temporary names.
_EXPORT_LOCK = threading.Lock()


def default_cache_root() -> Path:
    """~/.cache/reflex/models, like ``reflex eval``'s ~/.cache/reflex/eval (the images set
    HOME to a writable directory)."""
    return Path.home() / ".cache" / "reflex" / "models"


def cache_key(source: Path, *, output: str, input_names: Sequence[str]) -> str:
    import onnxruntime

    digest = blake3.blake3()
    recipe = f"{RECIPE_VERSION}|{OPSET}|{output}|{','.join(input_names)}|{torch.__version__}|{onnxruntime.__version__}"
    digest.update(recipe.encode())
    for path in sorted(p for p in source.iterdir()
                       if p.is_file() and (p.name in _GRAPH_FILES or p.suffix in _WEIGHT_SUFFIXES)):
        digest.update(b"\0" + path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:20]


class _Output(torch.nn.Module):
    """The module with positional inputs and the one output wanted (the exporter traces
    ``forward(*inputs)``; the pooler and anything else unused is left out of the graph)."""

    def __init__(self, module: torch.nn.Module, output: str, input_names: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.output = output
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.module(**dict(zip(self.input_names, inputs, strict=True))), self.output)


def _example(input_names: Sequence[str], pad_id: int) -> tuple[torch.Tensor, ...]:
    # Two rows of different lengths: the second is padded, so the trace goes through the
    # attention-mask path (an all-ones mask could let the model skip masking at trace time).
    ids = torch.tensor([[101, 2129, 2079, 1045, 2415, 1037, 4487, 2615, 102], [101, 7592, 102] + [pad_id] * 6])
    mask = (torch.arange(ids.shape[1]) < torch.tensor([[9], [3]])).long()
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[name] for name in input_names)


@contextlib.contextmanager
def _eager_attention(module: torch.nn.Module) -> Iterator[None]:
    """The module traced with transformers' eager attention (matmul, mask add, softmax, matmul).

    ONNX Runtime's transformer optimizer fuses that pattern into one ``Attention`` node per
    layer; the default ``sdpa`` attention exports as a graph it does not recognise (with
    IsNaN/Where guards), which stayed at 669 nodes where the fused eager export has 46."""
    config = getattr(module, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if config is None or before in (None, "eager") or not hasattr(module, "set_attn_implementation"):
        yield
        return
    module.set_attn_implementation("eager")
    try:
        yield
    finally:
        module.set_attn_implementation(before)


def _export_fp32(module: torch.nn.Module, dst: Path, *, output: str, input_names: Sequence[str], pad_id: int) -> None:
    wrapper = _Output(module, output, input_names).eval()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic["output"] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    # The exporter warns about tracing and deprecation at length on every BERT; the export is
    # checked against eager torch instead (tests/models/test_backends.py). catch_warnings is
    # process-wide for its duration: this runs once per model, at load, before serving.
    with _EXPORT_LOCK, _eager_attention(module), torch.inference_mode(False), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): it needs no onnxscript, keeps the modules'
        # names on the nodes, and its BERT graph ran faster under ONNX Runtime than the
        # dynamo exporter's in our measurement. It ships with the pinned torch.
        torch.onnx.export(
            wrapper, _example(input_names, pad_id), str(dst), dynamo=False, input_names=list(input_names),
            output_names=["output"], dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True,
        )


class _OnnxRuntimeChatter(logging.Filter):
    """Drops what ONNX Runtime's quantizer and transformer fusions log below ERROR: per-tensor
    and per-fusion INFO lines and generic advice, once per model load."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    # The quantizer logs on the root logger itself, the fusions on loggers of their own module
    # names ("fusion_base", "onnx_model"): a filter on the root logger sees only the former,
    # its handlers' filters see both. Our own summary line (reflex.onnx) says what was done.
    root = logging.getLogger()
    chatter = _OnnxRuntimeChatter()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(chatter)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(chatter)


def _fuse(src: Path, dst: Path, *, num_heads: int, hidden_size: int, input_names: Sequence[str], pad_id: int) -> None:
    """ONNX Runtime's BERT fusions (embedding + LayerNorm, Attention, SkipLayerNorm, BiasGelu) on
    the export, in fp32: the outputs stay those of torch (the tests hold them to 1e-4; measured
    2-6e-6), with a tenth of the nodes. At batch 1, where a CPU forward is mostly per-node
    overhead, one MiniLM query took 0.78-0.90x the unfused graph's time back to back on two
    machines; a 32-row batch 0.91-1.13x (README, Performance).

    The fusions match patterns, and a pattern matched on an architecture they were not written
    for (or with the wrong head count) would compute something else without an error. So the
    fused graph must give the export's outputs on the export's own example batch (one row
    padded), or the export itself is saved in its place, with a warning: slower, never wrong."""
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: only the fusions, in Python; ONNX Runtime's own graph optimizations run when
    # the session loads (OnnxEncoder), for the machine it runs on.
    with _quiet_onnxruntime():
        fused = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
        made = {op: n for op, n in fused.get_fused_operator_statistics().items() if n}
        fused.save_model_to_file(str(dst))
    example = {name: t.numpy() for name, t in zip(input_names, _example(input_names, pad_id), strict=True)}
    want, got = _run(src, example), _run(dst, example)
    if want.shape != got.shape or not np.allclose(got, want, rtol=FUSED_RTOL, atol=FUSED_ATOL):
        worst = float(np.abs(got - want).max()) if want.shape == got.shape else float("inf")
        log.warning("ONNX Runtime's fusions changed the outputs of %s (by up to %.3g; fused %s): "
                    "serving the unfused export", src, worst, made)
        shutil.copyfile(src, dst)
    elif not made.get("Attention"):
        log.warning("ONNX Runtime fused no attention in %s (fused %s): its attention runs as exported", src, made)
    else:
        log.info("fused %s: %s", src, made)


def _run(path: Path, example: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # An input the model never reads (token_type_ids with no type embeddings) is not in the graph.
    (out,) = session.run(None, {i.name: example[i.name] for i in session.get_inputs()})
    return np.asarray(out, dtype=np.float32)


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weights int8 per output channel (per tensor moved the shipped verifier's probabilities by
    # up to 0.52, per channel by 0.25, on 300 QQP pairs); activations are quantized per batch at
    # run time. Only MatMuls against constant weights are quantized, never activation x
    # activation products (attention scores).
    with _quiet_onnxruntime():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"MatMulConstBOnly": True})


def _writable(root: Path) -> Path:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
        return root
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"reflex-models-{os.getuid()}"
        log.warning("model cache %s is not writable (%s); exporting into %s (set REFLEX_MODEL_CACHE_PATH)",
                    root, exc, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _atomic(dst: Path, write: Callable[[Path], None]) -> None:
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _prune_stale(entry: Path) -> None:
    """Delete the other entries of the same model directory name unused for STALE_AFTER_S."""
    prefix = entry.name.rsplit("-", 1)[0] + "-"
    cutoff = time.time() - STALE_AFTER_S
    for other in entry.parent.iterdir():
        if other != entry and other.is_dir() and other.name.startswith(prefix) and other.stat().st_mtime < cutoff:
            log.info("removing the stale ONNX cache entry %s", other)
            shutil.rmtree(other, ignore_errors=True)


def exported_model(
    module: torch.nn.Module,
    *,
    output: str,
    source: Path,
    input_names: Sequence[str],
    quantize: bool,
    cache_path: Path | None,
    pad_id: int,
) -> Path:
    """The ONNX file for ``module`` (fp32 fused, or int8 when ``quantize``), exported on a cache miss.

    int8 quantizes the export itself, not the fused graph, so its quantized MatMuls are those
    the int8 decision model (``decision.onnx-int8.json``) was fitted on; quantized after the
    fusions (into QAttention) it ran 1.05-1.20x slower at 5-32 rows (README, Performance).
    Exporting with eager attention moved the shipped verifier's int8 logits by 0.02 on average,
    0.19 at most, on 200 development-set pairs: a tenth of what int8's per-batch activation
    scales move them when the same pairs are batched 7 instead of 16 at a time, 0.27 and 1.66."""
    key = cache_key(source, output=output, input_names=input_names)
    entry = _writable(cache_path or default_cache_root()) / f"{source.name}-{key}"
    fresh = not entry.is_dir()
    entry.mkdir(parents=True, exist_ok=True)
    os.utime(entry)  # last used: what the pruning of stale entries goes by
    if fresh:
        _prune_stale(entry)
    fp32, fused, int8 = entry / "model.onnx", entry / "model.fused.onnx", entry / "model.int8.onnx"
    wanted = int8 if quantize else fused
    if not fp32.is_file() and not wanted.is_file():
        log.info("exporting %s to ONNX (once; cached in %s)", source, entry)
        _atomic(fp32, lambda tmp: _export_fp32(module, tmp, output=output, input_names=input_names, pad_id=pad_id))
    if not quantize:
        if not fused.is_file():
            config = getattr(module, "config", None)
            # 0 lets the optimizer read them off the graph
            heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
            _atomic(fused, lambda tmp: _fuse(fp32, tmp, num_heads=heads, hidden_size=hidden,
                                             input_names=input_names, pad_id=pad_id))
        return fused
    if not int8.is_file():
        log.info("quantizing %s to int8", fp32)
        _atomic(int8, lambda tmp: _quantize_int8(fp32, tmp))
    return int8
