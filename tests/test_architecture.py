"""The layers of the tree, enforced: import-linter's contracts (pyproject.toml,
[tool.importlinter]) run here, so a wrong import fails the suite instead of waiting for a
reviewer. Each contract is also shown to catch the import it exists to forbid."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_the_import_contracts_hold() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and the contracts, copied, so a test can add a wrong import to them."""
    root = tmp_path_factory.mktemp("tree")
    for package in ("commands", "services", "reflex"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "model"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("reflex/tokens.py", "import services.gateway.keys", "Layers: commands (roots)"),
        ("services/gateway/keys.py", "import commands.cli", "Layers: commands (roots)"),
        ("services/embedder/model.py", "import services.verifier.rules", "No service imports another"),
        ("services/gateway/keys.py", "import torch", "The gateway never imports torch"),
        ("services/gateway/hit_format.py", "import transformers", "The gateway never imports torch"),
        ("services/model_server/errors.py", "import services.embedder.model", "Inside services"),
    ],
)
def test_each_contract_catches_a_wrong_import(tree_copy: Path, module: str, line: str, contract: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + "\n" + textwrap.dedent(line) + "  # noqa\n")
        result = lint(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = [block for block in result.stdout.split("\n\n") if "BROKEN" in block]
    assert any(contract in block for block in broken), result.stdout
