"""Fixtures of tests/deploy: the chart rendered once per value set for the whole session."""

from __future__ import annotations

import pytest

from chart_render import VALUE_SETS, Rendered, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]
