"""The composition roots: the ``reflex`` command and the launchers and tools it runs.

Each reads its process's settings (``commands.cli``) and builds services from ``services/``;
nothing below imports from here (import-linter contract in pyproject.toml)."""
