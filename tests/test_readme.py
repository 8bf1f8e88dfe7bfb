"""The README stays true: it documents every REFLEX_* setting, its two set-up commands are the
ones the Makefile provides, and CI runs the README's test command and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.settings import all_setting_names

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"`(REFLEX_[A-Z0-9_]+)`", README))
    settings = all_setting_names()
    assert settings - documented == set(), "settings missing from README"
    test_only = {"REFLEX_TEST_DATA_DIR"}  # a test-suite variable, not a product setting
    assert documented - settings - test_only == set(), "README names settings that do not exist"


def test_two_setup_commands_exist_and_ci_runs_the_test_one() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1].strip() == "make test"
