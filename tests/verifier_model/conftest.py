"""Shared fixtures for the verifier-model tests."""

from __future__ import annotations

import random

import pytest

from services.verifier.training.data import Pair


def synthetic_qqp(n_groups: int = 60, seed: int = 0) -> list[Pair]:
    """Chains and stars of linked questions, so groups span several pairs."""
    rng = random.Random(seed)
    pairs = []
    for g in range(n_groups):
        qs = [f"group {g} question {i}?" for i in range(rng.randint(2, 5))]
        for i in range(1, len(qs)):
            other = qs[rng.randrange(i)]
            # Case/space variants are the same question and must stay in the same group.
            b = qs[i].upper() if rng.random() < 0.2 else qs[i]
            pairs.append(Pair(other, b, rng.random() < 0.4))
    rng.shuffle(pairs)
    return pairs


@pytest.fixture
def qqp_pairs() -> list[Pair]:
    return synthetic_qqp()
