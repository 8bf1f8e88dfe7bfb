"""Fixtures for the Tauq codec, token counting and hit-format tests."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared test data lives beside the checkout; REFLEX_TEST_DATA_DIR points elsewhere
# (a test-only variable, not a product setting).
DATA_DIR = Path(os.environ.get("REFLEX_TEST_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def read_jsonl(name: str) -> list[dict[str, Any]]:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: set REFLEX_TEST_DATA_DIR to the shared data folder")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that Python's == is too lenient for: 1 vs 1.0 vs True are different JSON,
    -0.0 keeps its sign, and object key order is part of the value."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b
