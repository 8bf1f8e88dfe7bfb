"""``reflex tauq encode|decode``: JSON <-> Tauq on stdin/stdout (or a file argument)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reflex.settings import ToolSettings
from reflex.tauq import TauqError, dumps, loads


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN/Infinity by default; they are not JSON and Tauq cannot hold them.
    raise ValueError(f"{name} is not a JSON value")


def _read(path: str | None) -> str:
    data = sys.stdin.buffer.read() if path in (None, "-") else open(path, "rb").read()
    return data.decode("utf-8")


def main(argv: list[str], settings: ToolSettings) -> int:
    parser = argparse.ArgumentParser(
        prog="reflex tauq",
        description="Convert JSON to Tauq (encode) or Tauq to JSON (decode). "
        "Reads the file given, or stdin; writes stdout.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    enc = sub.add_parser("encode", help="JSON in, Tauq out")
    enc.add_argument("file", nargs="?", help="JSON file (default: stdin)")
    dec = sub.add_parser("decode", help="Tauq in, JSON out")
    dec.add_argument("file", nargs="?", help="Tauq file (default: stdin)")
    dec.add_argument("--indent", type=int, default=None, help="pretty-print the JSON with this indent")
    args = parser.parse_args(argv)

    try:
        text = _read(args.file)
        if args.action == "encode":
            try:
                value = json.loads(text, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
            out = dumps(value)
        else:
            value = loads(text)
            out = json.dumps(value, ensure_ascii=False, indent=args.indent)
        sys.stdout.write(out + "\n")
    except TauqError as exc:
        print(f"reflex tauq {args.action}: {'not Tauq' if args.action == 'decode' else 'cannot encode'}: {exc}",
              file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        # UnicodeDecodeError is a ValueError: input that is not UTF-8 is bad input too.
        print(f"reflex tauq {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
