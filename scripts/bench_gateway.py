#!/usr/bin/env python3
"""Moved into `reflex bench` (commands/bench_gateway.py); kept so old command lines still work.

    python scripts/bench_gateway.py [--redis]      ->  reflex bench --only l1 [--redis]
    python scripts/bench_gateway.py --semantic     ->  reflex bench --only semantic
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    section = "semantic" if "--semantic" in args else "l1"
    sys.exit(main(["bench", "--only", section, *(a for a in args if a != "--semantic")]))
