"""Argument parsing and dispatch for ``coinfer``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from coinfer.sdk._version import __version__
from coinfer.sdk.cli.registry import COMMANDS, EXIT_NOT_IMPLEMENTED, CommandSpec
from coinfer.sdk.errors import CoinferError


def _not_implemented_message(spec: CommandSpec) -> str:
    where = f" (tracked in issue #{spec.tracking_issue})" if spec.tracking_issue else ""
    return f"coinfer {spec.name}: not implemented yet{where}."


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the sub-command being run imports its module."""
    parser = argparse.ArgumentParser(
        prog="coinfer",
        description="Heterogeneous collaborative model inference: device, edge and cloud "
        "share the work of running AI models.",
    )
    parser.add_argument("--version", action="version", version=f"coinfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in COMMANDS:
        summary = spec.summary if spec.implemented else f"{spec.summary} [not implemented yet]"
        command_parser = sub.add_parser(spec.name, help=summary, description=spec.summary)
        if spec.name == selected and spec.implemented:
            importlib.import_module(spec.module).add_arguments(command_parser)
        elif not spec.implemented:
            # Accept anything so the command can say clearly that it is missing.
            command_parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _selected_command(argv: Sequence[str]) -> str | None:
    names = {spec.name for spec in COMMANDS}
    return next((arg for arg in argv if arg in names), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coinfer`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected_command(argv)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    spec = next(spec for spec in COMMANDS if spec.name == args.command)
    if not spec.implemented:
        print(_not_implemented_message(spec), file=sys.stderr)
        return EXIT_NOT_IMPLEMENTED
    module = importlib.import_module(spec.module)
    try:
        return int(module.run(args) or 0)
    except CoinferError as error:
        print(f"coinfer {spec.name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"coinfer {spec.name}: interrupted; no partial outputs were left", file=sys.stderr)
        return 130
