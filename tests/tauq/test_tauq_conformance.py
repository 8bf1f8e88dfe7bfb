"""The reference vectors: 200 values with the text epistates/tauq 0.2.0 writes for them."""

from __future__ import annotations

import pytest

from reflex.tauq import dumps, loads

from .conftest import read_jsonl, strict_equal

VECTORS = read_jsonl("tauq_vectors.jsonl")
IDS = [f"vector{i}" for i in range(len(VECTORS))]


def test_all_vectors_are_present() -> None:
    assert len(VECTORS) == 200


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_loads_reads_the_reference_text(vector: dict) -> None:
    assert strict_equal(loads(vector["tauq"]), vector["json"])


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_dumps_round_trips(vector: dict) -> None:
    assert strict_equal(loads(dumps(vector["json"])), vector["json"])


def test_dumps_matches_the_reference_layout_byte_for_byte() -> None:
    # Where the reference is lossless we keep its layout; the share is reported in the README.
    differing = [i for i, v in enumerate(VECTORS) if dumps(v["json"]) != v["tauq"]]
    share = 1 - len(differing) / len(VECTORS)
    assert not differing, f"byte-identical share {share:.1%}; first differing vectors: {differing[:10]}"
