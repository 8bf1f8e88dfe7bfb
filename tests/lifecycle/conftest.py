from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lifecycle.support import GcsEmulator


@pytest.fixture(scope="session")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs")).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def bucket(gcs: GcsEmulator, request: pytest.FixtureRequest) -> str:
    name = f"snap-{abs(hash(request.node.nodeid)) % 10**10}"
    gcs.create_bucket(name)
    return name
