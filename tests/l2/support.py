"""Helpers shared by the L2 tests: test vectors with known cosines, and the local-mode warnings."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

DIM = 16

# Local mode searches exactly and has no payload indexes; it says so on every call. The code path
# is the one a server takes, so the warnings are expected in these tests and only here.
LOCAL_MODE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

OpenStore = Callable[..., Awaitable[Any]]


def unit(angle_deg: float, axis: int = 1, dim: int = DIM) -> list[float]:
    """A unit vector at ``angle_deg`` from e0 towards e_axis: its cosine with e0 is cos(angle)."""
    v = [0.0] * dim
    v[0] = math.cos(math.radians(angle_deg))
    v[axis] += math.sin(math.radians(angle_deg))
    return v
