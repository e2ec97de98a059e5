"""Argument parsing and dispatch for ``coinfer``.

Every command group is built the same way: the catalogue (:mod:`coinfer.sdk.cli.registry`)
names the groups and actions, and only the module of the action being run is imported (an
entry point of its distribution), so ``coinfer --help`` starts in a fraction of a second
and a missing distribution is one line saying what to install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType

from coinfer.sdk._version import __version__
from coinfer.sdk.cli.flags import CommandParser
from coinfer.sdk.cli.registry import (
    ENTRY_POINT_GROUP,
    EXIT_UNAVAILABLE,
    EXTRAS,
    GROUPS,
    Group,
    group,
)
from coinfer.sdk.errors import CoinferError

__all__ = ["EXIT_UNAVAILABLE", "build_parser", "main"]


class UnavailableCommand(CoinferError):
    """A command that is not built yet, or whose distribution is not installed."""


def _command_module(name: str, distribution: str) -> ModuleType:
    """The module behind entry point ``name``, or why it cannot be had."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise UnavailableCommand(f"`coinfer {name.replace('.', ' ')}` is provided by {distribution}, which "
                                 f"is not installed: pip install {distribution} "
                                 f"(or 'coinfer[{EXTRAS[distribution]}]')")
    return next(iter(found)).load()


def _attach(parser: argparse.ArgumentParser, name: str, distribution: str) -> None:
    """Give ``parser`` the arguments of the command behind entry point ``name``, and remember
    the module, so running it needs no second lookup."""
    module = _command_module(name, distribution)
    module.add_arguments(parser)
    parser.set_defaults(command_module=module)


def _selected(argv: Sequence[str]) -> tuple[Group | None, str | None]:
    """The group and action named on the command line (the first words that are not options)."""
    words = [word for word in argv if not word.startswith("-")]
    chosen = group(words[0]) if words else None
    if chosen is None or len(words) < 2 or chosen.action(words[1]) is None:
        return chosen, None
    return chosen, words[1]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``coinfer`` parser; only the action named in ``argv`` imports its module."""
    parser = CommandParser(
        prog="coinfer",
        description="Heterogeneous collaborative model inference: device, edge and cloud "
        "share the work of running AI models.",
    )
    parser.add_argument("--version", action="version", version=f"coinfer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen, action = _selected(argv)
    for spec in GROUPS:
        summary = spec.summary if spec.implemented else f"{spec.summary} [not implemented yet]"
        child = commands.add_parser(spec.name, help=summary, description=spec.summary)
        if spec is not chosen:
            continue
        if not spec.implemented:
            child.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        elif spec.distribution is not None:
            _attach(child, spec.entry_point(), spec.distribution)
        else:
            actions = child.add_subparsers(dest="action", metavar="ACTION", required=True)
            for item in spec.actions:
                grandchild = actions.add_parser(item.name, help=item.summary, description=item.summary)
                if item.name == action:
                    _attach(grandchild, spec.entry_point(item.name), item.distribution)
    return parser


def _run(args: argparse.Namespace) -> int:
    spec = group(args.command)
    assert spec is not None  # argparse only accepts the catalogue's names
    if not spec.implemented:
        where = f" (tracked in issue #{spec.tracking_issue})" if spec.tracking_issue else ""
        raise UnavailableCommand(f"`coinfer {spec.name}` is not implemented yet{where}")
    # the parser attached the module of the command it parsed (build_parser)
    return int(args.command_module.run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coinfer`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Bad input of any kind ends in one line on stderr and a non-zero status, never a
    traceback: a :class:`~coinfer.sdk.errors.CoinferError` exits 1, a usage error 2, a
    missing command 69, an interrupt 130.

    Example:

    >>> main(["data", "scenes", "--out", "scenes", "--backgrounds", "moon"])  # says why on stderr
    1
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name = "coinfer"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        name = " ".join(part for part in ("coinfer", args.command, getattr(args, "action", None)) if part)
        return _run(args)
    except UnavailableCommand as error:
        print(f"coinfer: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CoinferError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no partial outputs were left", file=sys.stderr)
        return 130
