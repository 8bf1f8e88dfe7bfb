"""The ``reflex`` command: the one place each process reads its settings.

Each subcommand names the settings class of the process it runs, which is read from the
environment here and handed down, and its module is imported lazily, so ``reflex tauq`` does
not pay for torch and ``reflex gateway`` (whose image has no torch) never imports it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from reflex.settings import (
    EvalSettings,
    GatewaySettings,
    ModelServiceSettings,
    ProcessSettings,
    ServeSettings,
    SettingsError,
    ToolSettings,
)

# subcommand -> (module, function, settings class, help). The function takes (argv, settings)
# and returns an exit code.
COMMANDS: dict[str, tuple[str, str, type[ProcessSettings], str]] = {
    "serve": ("commands.serve", "main", ServeSettings, "gateway + embedder + verifier on one machine (embedded default)"),
    "gateway": ("services.gateway.main", "main", GatewaySettings, "the HTTP gateway alone (Kubernetes)"),
    "embedder": ("services.embedder.main", "main", ModelServiceSettings, "the embedder gRPC service"),
    "verifier": ("services.verifier.main", "main", ModelServiceSettings, "the verifier gRPC service"),
    "up": ("commands.topology", "main", ServeSettings, "a local multi-replica topology of separate processes"),
    "eval": ("commands.eval.cli", "main", EvalSettings, "measure hit and false-hit rates on labelled pairs"),
    "train-verifier": ("services.verifier.training.train", "main", EvalSettings, "train the verifier cross-encoder"),
    "tauq": ("commands.tauq", "main", ToolSettings, "encode JSON to Tauq or decode Tauq to JSON"),
    "bench": ("commands.bench", "main", ServeSettings, "measure speed, each figure a ratio to a baseline from the same run"),
    "snapshot": ("commands.snapshot", "main", GatewaySettings, "create, restore or list snapshots of the cache (local or gs://)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="reflex",
        description="Reflex: a verified semantic cache for LLM responses. "
        "Settings come from REFLEX_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, _, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser.error(f"unknown command {name!r}")
    module_name, func_name, settings_class, _ = COMMANDS[name]
    try:
        settings = settings_class.from_env()
    except SettingsError as exc:
        print(f"reflex: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
