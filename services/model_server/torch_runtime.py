"""Where and how a model runs: device, dtype, CPU threads, inference backend, offline loading.

Import this only in model processes: it imports torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reflex.settings import ModelSettings

log = logging.getLogger("reflex.torch")

# More intra-op threads than this buys little for encoder models of this size and starves
# the tokenizer thread and the event loop sharing the machine.
MAX_DEFAULT_THREADS = 8


@dataclass(frozen=True, slots=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    threads: int | None  # CPU intra-op threads set for torch; None on CUDA
    # How the forward pass runs (services.model_server.inference): always "torch" on CUDA.
    backend: str = "torch"
    # On CUDA only: small batches through CUDA graphs (REFLEX_CUDA_GRAPHS).
    cuda_graphs: bool = False

    @property
    def dtype_name(self) -> str:
        """What Info reports as the model's dtype: the torch dtype ('float32', 'bfloat16') for
        eager torch, else the backend ('onnx', 'onnx-int8', 'torch-int8'). ``reflex eval`` keys
        its embedding cache on it, so vectors of one backend are never read back for another."""
        if self.backend != "torch":
            return self.backend
        return str(self.dtype).removeprefix("torch.")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours cgroup/taskset limits, unlike cpu_count()
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_runtime(settings: ModelSettings, backend: str = "torch") -> Runtime:
    """CUDA when present (bf16, or fp16 where the card lacks bf16), else CPU in fp32 through
    ``backend`` (the model's REFLEX_EMBEDDER_BACKEND / REFLEX_VERIFIER_BACKEND).

    REFLEX_DEVICE overrides the choice. Half precision is only used on CUDA: on CPU it is
    slower than fp32 for these models, and less exact. The CPU backends (ONNX Runtime, int8)
    are CPU-only: on CUDA the model runs in torch whatever the setting says.
    """
    if settings.device:
        device = torch.device(settings.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"REFLEX_DEVICE={settings.device} but torch sees no CUDA device")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        with torch.cuda.device(device):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if backend != "torch":
            log.info("inference backend %s is for CPUs; on %s the model runs in torch", backend, device)
        return Runtime(device, dtype, None, "torch", settings.cuda_graphs)
    threads = settings.torch_threads or min(available_cores(), MAX_DEFAULT_THREADS)
    # Process-wide; under `reflex serve` the embedder and verifier set the same value.
    torch.set_num_threads(threads)
    return Runtime(device, torch.float32, threads, backend)


def local_model_dir(path: Path | str, *, what: str, setting: str) -> Path:
    """Resolve a model directory that must exist locally. Never a hub id: Reflex loads
    models offline only (from_pretrained is also called with local_files_only=True)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir() or not (resolved / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: {resolved} is not a model directory (no config.json); set {setting} "
            "to a local Hugging Face / sentence-transformers directory"
        )
    return resolved


def model_name(path: Path) -> str:
    """A short, stable name for Info: the directory's name, or its parent's when the
    directory is a generic 'model' folder inside a package."""
    return path.parent.name if path.name == "model" else path.name
