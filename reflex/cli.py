"""The ``reflex`` command. Each subcommand imports its service lazily, so ``reflex tauq``
does not pay for torch and ``reflex gateway`` does not load a model."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from reflex.config import Settings, SettingsError

# subcommand -> (module, function, help). The function takes (argv, settings) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("reflex.serve", "main", "gateway + embedder + verifier on one machine (embedded default)"),
    "gateway": ("services.gateway.main", "main", "the HTTP gateway alone (Kubernetes)"),
    "embedder": ("services.embedder.main", "main", "the embedder gRPC service"),
    "verifier": ("services.verifier.main", "main", "the verifier gRPC service"),
    "up": ("reflex.topology", "main", "a local multi-replica topology of separate processes"),
    "eval": ("reflex.eval.cli", "main", "measure hit and false-hit rates on labelled pairs"),
    "train-verifier": ("services.verifier.training.train", "main", "train the verifier cross-encoder"),
    "tauq": ("reflex.tauq.cli", "main", "encode JSON to Tauq or decode Tauq to JSON"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="reflex",
        description="Reflex: a verified semantic cache for LLM responses. "
        "Settings come from REFLEX_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"reflex: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
