"""The verifier's model runner: any ``*ForSequenceClassification`` cross-encoder directory.

A (query, candidate) pair goes through the model as one sequence; the output is turned into
a probability that both ask the same thing: sigmoid(logit) for a one-logit head (how
sentence-transformers' CrossEncoder is trained), softmax(...)[1] for a two-class head
(``LABEL_1`` = duplicate, as in QQP-style classifiers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import services.verifier
from reflex.settings import ModelServiceSettings, ModelSettings
from services.model_server.encoding import Encoding, PaddedRows, encodings_from
from services.model_server.inference import build_encoder
from services.model_server.torch_runtime import (
    Runtime,
    choose_runtime,
    local_model_dir,
    model_name,
)
from services.verifier import decision

log = logging.getLogger("reflex.verifier")

Pair = tuple[str, str]

# Bound on characters kept per side before tokenizing; see services.embedder.model.
CHARS_PER_TOKEN_BOUND = 64


def default_model_path() -> Path:
    """The cross-encoder shipped inside the package (services/verifier/model/)."""
    return Path(services.verifier.__file__).resolve().parent / "model"


def resolve_model_path(settings: ModelSettings) -> Path:
    if settings.verifier_path is not None:
        return local_model_dir(settings.verifier_path, what="verifier", setting="REFLEX_RERANKER_PATH")
    shipped = default_model_path()
    if not (shipped / "config.json").is_file():
        raise FileNotFoundError(
            f"verifier: no model. REFLEX_RERANKER_PATH is unset and the shipped model {shipped} is missing "
            "(train it with `reflex train-verifier`); set REFLEX_RERANKER_PATH to any cross-encoder "
            "(*ForSequenceClassification) directory"
        )
    return local_model_dir(shipped, what="verifier", setting="REFLEX_RERANKER_PATH")


class CrossEncoderModel(PaddedRows):
    """A ModelBackend (services.model_server.batching) for (query, candidate) -> probability."""

    def __init__(self, path: Path, settings: ModelSettings, runtime: Runtime | None = None) -> None:
        self.path = path
        self.name = model_name(path)
        self.runtime = runtime or choose_runtime(settings, settings.verifier_backend)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, dtype=self.runtime.dtype
        )
        self.model.to(self.runtime.device).eval()
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"verifier: {path} has {self.num_labels} labels; a cross-encoder has 1 or 2")
        limits = [settings.max_seq_length, getattr(self.model.config, "max_position_embeddings", None)]
        self.max_tokens = min(x for x in limits if x)
        self._pad_id = self.tokenizer.pad_token_id or 0
        self._uses_token_types = "token_type_ids" in self.tokenizer.model_input_names
        # How the forward pass runs (REFLEX_VERIFIER_BACKEND, REFLEX_CUDA_GRAPHS).
        self.encoder = build_encoder(
            self.model, output="logits", source=path,
            input_names=["input_ids", "attention_mask"] + (["token_type_ids"] if self._uses_token_types else []),
            runtime=self.runtime, cache_path=settings.model_cache_path, pad_id=self._pad_id, max_tokens=self.max_tokens,
        )
        log.info("verifier: %s (%d label%s, %d tokens) on %s/%s", self.name, self.num_labels,
                 "" if self.num_labels == 1 else "s", self.max_tokens, self.runtime.device, self.runtime.dtype_name)
        # The decision model beside the checkpoint (REFLEX_VERIFIER_DECISION): loaded and checked
        # against these weights here, so that a mismatch stops the service before SERVING.
        self.decision, why = decision.resolve(path, settings.verifier_decision, backend=self.runtime.backend)
        if self.decision is None:
            log.warning("verifier: no decision model: %s", why)
        else:
            log.info("verifier: %s", why)

    # ------------------------------------------------------------------ ModelBackend
    def tokenize(self, pairs: Sequence[Pair]) -> list[Encoding]:
        limit = self.max_tokens * CHARS_PER_TOKEN_BOUND
        enc = self.tokenizer([q[:limit] for q, _ in pairs], [c[:limit] for _, c in pairs], truncation=True,
                             max_length=self.max_tokens, padding=False, return_attention_mask=False,
                             return_token_type_ids=self._uses_token_types)
        return encodings_from(enc, with_token_types=self._uses_token_types)

    def warm_up(self) -> None:
        """Run on the model thread before SERVING (compiles and records CUDA graphs when on)."""
        self.encoder.warm_up()

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        logits = self.encoder(batch)
        probs = torch.sigmoid(logits[:, 0]) if self.num_labels == 1 else torch.softmax(logits, dim=-1)[:, 1]
        return probs.cpu().numpy()


def load_cross_encoder(settings: ModelServiceSettings) -> CrossEncoderModel:
    return CrossEncoderModel(resolve_model_path(settings.model), settings.model)
