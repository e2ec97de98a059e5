"""Sub-commands with actions (``coinfer gate bench``, ``coinfer infi analyze``): one table each.

A capability's CLI module keeps ``ACTIONS = {action: (summary, module)}``, where each module
provides ``add_arguments(parser)`` and ``run(args) -> int``, and delegates to these two
functions. Modules are imported when the parser is built, so heavy imports stay inside them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping

Actions = Mapping[str, tuple[str, str]]


def add_action_parsers(parser: argparse.ArgumentParser, actions: Actions) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, (summary, module) in actions.items():
        child = sub.add_parser(action, help=summary, description=summary)
        importlib.import_module(module).add_arguments(child)


def run_action(args: argparse.Namespace, actions: Actions) -> int:
    return int(importlib.import_module(actions[args.action][1]).run(args))
