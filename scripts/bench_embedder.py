#!/usr/bin/env python3
"""Moved into `reflex bench` (commands/bench_models.py); kept so old command lines still work.

    python scripts/bench_embedder.py   ->  reflex bench --only models
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "models", *sys.argv[1:]]))
