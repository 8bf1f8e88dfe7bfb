"""Settings helpers for tests that check the chart, the images and the README against the
settings classes (``reflex.settings``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reflex.settings import PROCESSES


def all_setting_names() -> set[str]:
    """Every REFLEX_* variable some process reads."""
    return {env for process in PROCESSES for env, _ in process.fields()}


def parse_settings(variables: Mapping[str, Any]) -> None:
    """Validate REFLEX_* values the way each process that reads them would at start-up.

    Each process is built from the variables it knows; one that no process reads is an error.
    Raises SettingsError (naming the variable) on a bad type or range.
    """
    flat = {name.removeprefix("REFLEX_").lower(): value for name, value in variables.items()}
    unknown = set(flat)
    for process in PROCESSES:
        mine = {k: v for k, v in flat.items() if k in set(process.flat_names())}
        unknown -= set(mine)
        process.build(**mine)
    assert not unknown, f"no process reads {sorted(unknown)}"
