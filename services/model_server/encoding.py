"""Tokenized rows and their padding, shared by the embedder and the verifier runners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(slots=True)
class Encoding:
    input_ids: list[int]
    token_type_ids: list[int] | None


def collate_padded(encodings: Sequence[Encoding], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row (the token budget counts exactly this shape)."""
    rows, width = len(encodings), max(len(e.input_ids) for e in encodings)
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64) if encodings[0].token_type_ids is not None else None
    for i, e in enumerate(encodings):
        n = len(e.input_ids)
        ids[i, :n] = e.input_ids
        mask[i, :n] = 1
        if types is not None and e.token_type_ids is not None:
            types[i, :n] = e.token_type_ids
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def encodings_from(tokenized: Any, *, with_token_types: bool) -> list[Encoding]:
    """Rows of a Hugging Face tokenizer's unpadded output, as Encodings."""
    types = tokenized.get("token_type_ids") if with_token_types else None
    return [Encoding(ids, types[i] if types is not None else None) for i, ids in enumerate(tokenized["input_ids"])]


class PaddedRows:
    """The token-counting and padding half of a ModelBackend, the same for both model services:
    a row costs its length, and a batch is right-padded with the tokenizer's pad id."""

    _pad_id: int

    def num_tokens(self, encoding: Encoding) -> int:
        return len(encoding.input_ids)

    def collate(self, encodings: Sequence[Encoding]) -> dict[str, torch.Tensor]:
        return collate_padded(encodings, self._pad_id)
