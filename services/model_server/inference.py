"""How a loaded encoder runs its forward pass (REFLEX_EMBEDDER_BACKEND, REFLEX_VERIFIER_BACKEND,
REFLEX_CUDA_GRAPHS).

Both model services own a Hugging Face encoder and want one tensor out of it (the embedder the
last hidden state, the verifier the logits). ``build_encoder`` wraps that module in one of:

* ``torch``: eager torch, fp32 on CPU, bf16/fp16 on CUDA. The reference.
* ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` on every Linear layer (int8
  weights per output channel, activations quantized per batch). CPU only.
* ``onnx``: the same fp32 weights exported once to ONNX (with eager attention) and fused by
  ONNX Runtime's transformer optimizer (one Attention node per layer), whose kernels beat
  eager torch on a CPU at no cost in accuracy (1e-5).
* ``onnx-int8``: the unfused export quantized by ``onnxruntime.quantization.quantize_dynamic`` (int8
  weights per output channel, activations per batch), the fastest on a CPU.

int8 moves the scores a little, so the default backend is chosen by ``reflex eval`` (README,
Performance), never assumed. On CUDA the backend is always torch; there, small batches can run
through CUDA graphs (``CudaGraphEncoder``), because at batch 1 MiniLM's time on a GPU is
almost all kernel-launch overhead.

An encoder takes the padded batch (``services.model_server.encoding.collate_padded``: CPU
int64 tensors) and returns the output as a float tensor; nothing here pools or scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from services.model_server.torch_runtime import Runtime

log = logging.getLogger("reflex.inference")

# Shapes CUDA graphs are recorded for: a batch of up to 8 rows is padded up to the next row
# bucket and its length up to the next length bucket. Few buckets keep the recorded graphs (and
# their memory) few; the padding they add is cheap on a GPU, where launches, not FLOPs, are
# the cost of a small batch. Larger batches run eager: there launches are amortised anyway.
GRAPH_ROW_BUCKETS = (1, 2, 4, 8)
GRAPH_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


class Encoder(Protocol):
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The wanted output of one padded batch, as a float tensor (on the model's device)."""

    def warm_up(self) -> None:
        """Anything to do on the model thread before serving (compiling, recording graphs)."""


class TorchEncoder:
    """Eager torch (fp32, bf16/fp16 on CUDA, or a dynamically quantized module)."""

    def __init__(self, module: torch.nn.Module, output: str, device: torch.device) -> None:
        self.module = module
        self.output = output
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return getattr(self.module(**inputs), self.output).float()

    def warm_up(self) -> None:
        return None


class OnnxEncoder:
    """An exported model run by ONNX Runtime on the CPU."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort  # only the processes that run an ONNX backend load it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One batch at a time runs on the model thread: parallelism comes from intra-op threads.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between batches: under `reflex serve` the embedder, the verifier and
        # the gateway share the cores, and spinning pool threads take them from the others.
        # Measured on 2 cores, Embed(1) then Score(5) back to back: p50 28 ms without
        # spinning, 35 ms with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # CPU tensors from collate_padded: .numpy() shares their memory, no copy.
        feeds = {name: batch[name].numpy() for name in self.input_names}
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def warm_up(self) -> None:
        return None


class CudaGraphEncoder:
    """Small batches through ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), padded
    to a few fixed shapes that ``warm_up`` compiles and records; larger ones run eager.

    Padding rows carry one attended token (so no attention row is all masked) and are cut off
    the output; padding columns are masked, so the real rows' outputs are those of eager up
    to the kernels' rounding. CUDA graph trees belong to the thread that recorded them, so
    ``warm_up`` must run on the model thread (ModelServer does that). If compiling fails (no
    Triton, no C compiler on the host), the encoder logs it and stays eager.
    """

    def __init__(self, eager: TorchEncoder, *, pad_id: int, max_tokens: int, input_names: Sequence[str]) -> None:
        self.eager = eager
        self.pad_id = pad_id
        self.input_names = tuple(input_names)
        self.lengths = tuple(b for b in GRAPH_LENGTH_BUCKETS if b < max_tokens) + (max_tokens,)
        # dynamic=True: one compile per model; each padded shape then only records a graph.
        self._compiled: Any = torch.compile(eager.module, mode="reduce-overhead", dynamic=True)
        self.graphed_calls = 0  # read by tests and benchmarks

    def bucket(self, rows: int, width: int) -> tuple[int, int] | None:
        row_bucket = next((b for b in GRAPH_ROW_BUCKETS if b >= rows), None)
        length_bucket = next((b for b in self.lengths if b >= width), None)
        if row_bucket is None or length_bucket is None:
            return None
        return row_bucket, length_bucket

    def pad(self, batch: Mapping[str, torch.Tensor], rows: int, width: int) -> dict[str, torch.Tensor]:
        """``batch`` padded to ``rows`` x ``width`` (on the CPU, before the copy to the GPU)."""
        have_rows, have_width = batch["input_ids"].shape
        out: dict[str, torch.Tensor] = {}
        for name, tensor in batch.items():
            fill = self.pad_id if name == "input_ids" else 0
            padded = torch.full((rows, width), fill, dtype=tensor.dtype)
            padded[:have_rows, :have_width] = tensor
            if name == "attention_mask":
                padded[have_rows:, 0] = 1
            out[name] = padded
        return out

    @torch.inference_mode()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        rows, width = batch["input_ids"].shape
        shape = self.bucket(rows, width) if self._compiled is not None else None
        if shape is None:
            return self.eager(batch)
        padded = self.pad(batch, *shape)
        inputs = {k: v.to(self.eager.device, non_blocking=True) for k, v in padded.items()}
        try:
            # Tells the graph trees that the previous call's outputs are no longer read.
            torch.compiler.cudagraph_mark_step_begin()
            out = getattr(self._compiled(**inputs), self.eager.output)
        except Exception:  # a recompile that fails must cost speed, never the batch
            log.exception("CUDA graphs: a compiled call failed; small batches run eager from now on")
            self._compiled = None
            return self.eager(batch)
        self.graphed_calls += 1
        # .float() copies out of the graph's static output buffer, which the next replay reuses.
        real = out[:rows, :width] if out.dim() == 3 else out[:rows]
        return real.float()

    def warm_up(self) -> None:
        try:
            for rows in GRAPH_ROW_BUCKETS:
                for width in self.lengths:
                    ids = torch.full((rows, width), self.pad_id, dtype=torch.int64)
                    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                             "token_type_ids": torch.zeros_like(ids)}
                    self({k: v for k, v in batch.items() if k in self.input_names})
        except Exception:  # a missing toolchain must not keep the service from serving
            log.exception("CUDA graphs: compiling failed; small batches run eager")
            self._compiled = None
        torch.cuda.synchronize(self.eager.device)


def quantize_torch_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 on every Linear, weights per output channel (per tensor moved the shipped
    verifier's probabilities by up to 0.74 on QQP pairs, per channel by 0.38).

    torch.ao.quantization is deprecated upstream in favour of torchao, which is not a
    dependency; it still ships with the pinned torch, and ``onnx-int8`` is the int8 backend
    that does not depend on it."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def build_encoder(
    module: torch.nn.Module,
    *,
    output: str,
    source: Path,
    input_names: Sequence[str],
    runtime: Runtime,
    cache_path: Path | None,
    pad_id: int,
    max_tokens: int,
) -> Encoder:
    """The encoder ``runtime.backend`` asks for, around ``module`` (already on its device,
    in eval mode). ``source`` is the weights' directory, part of the ONNX cache key."""
    backend = runtime.backend
    if backend == "torch":
        eager = TorchEncoder(module, output, runtime.device)
        if runtime.device.type == "cuda" and runtime.cuda_graphs:
            return CudaGraphEncoder(eager, pad_id=pad_id, max_tokens=max_tokens, input_names=input_names)
        return eager
    if runtime.device.type != "cpu":
        raise ValueError(f"inference backend {backend!r} runs on the CPU only, not {runtime.device}")
    if backend == "torch-int8":
        return TorchEncoder(quantize_torch_int8(module), output, runtime.device)
    if backend in ("onnx", "onnx-int8"):
        from services.model_server.onnx_export import exported_model

        path = exported_model(module, output=output, source=source, input_names=input_names,
                              quantize=backend == "onnx-int8", cache_path=cache_path, pad_id=pad_id)
        return OnnxEncoder(path, runtime.threads or 1)
    raise ValueError(f"unknown inference backend {backend!r}")
