"""What every ``coinfer`` command shares: its parser class and the flags with one spelling.

A concept has one flag everywhere (``--records`` for recorded data, ``--budget`` with
``--cost`` for a budget, ``--quantization``, ``--json``, ``--out`` with ``--overwrite``, the
service flags), added by the helpers here. An old spelling stays accepted for one release
through :func:`add_renamed`: hidden from ``--help``, with a notice when it is used.

Example:

>>> parser = CommandParser(prog="coinfer example")
>>> add_records(parser, "recorded outputs")
>>> add_renamed(parser, "--records", "--table")
>>> parser.parse_args(["--records", "steps.npz"]).records
PosixPath('steps.npz')
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from coinfer.sdk.errors import InvalidArgumentError, OutputExistsError


class _HelpFormatter(argparse.HelpFormatter):
    """Leaves renamed spellings out of ``--help``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        renamed = getattr(action, "renamed", ())
        if not renamed:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [s for s in action.option_strings if s not in renamed]
        return super()._format_action_invocation(shown)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``coinfer gate run: error: ...``)
    and which says so when a renamed flag (:func:`add_renamed`) is used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.renamed: dict[str, str] = {}

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        for word in sys.argv[1:] if args is None else args:
            old = str(word).split("=", 1)[0]
            if old in self.renamed:
                print(f"{self.prog}: {old} is deprecated and will be removed in the next release; "
                      f"use {self.renamed[old]}", file=sys.stderr)
        return super().parse_known_args(args, namespace)


def add_renamed(parser: argparse.ArgumentParser, flag: str, *old: str) -> None:
    """Accept the ``old`` spellings of ``flag`` (already added) for one release, with a notice."""
    action = next((a for a in parser._actions if flag in a.option_strings), None)
    if action is None:
        raise ValueError(f"{flag} is not an option of {parser.prog}")
    notices = parser.__dict__.setdefault("renamed", {})  # a plain ArgumentParser accepts them silently
    for spelling in old:
        parser._option_string_actions[spelling] = action
        notices[spelling] = flag
    action.option_strings = [*action.option_strings, *old]
    action.renamed = (*getattr(action, "renamed", ()), *old)  # type: ignore[attr-defined]


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` accepting only values > 0 of ``kind``."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def count(limit: int) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number in [1, ``limit``]: how many of something a
    command holds in memory at once, where a typo must not become an allocation failure."""
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be in [1, {limit}], got {text}")
        return value

    parse.__name__ = "int"
    return parse


def fraction(text: str) -> float:
    """An argparse ``type`` for a fraction in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def unwritable(path: Path, *, file: bool) -> str | None:
    """Why ``path`` can never be written, or None: the one check of every output flag, made
    before the work so that a bad path never costs a finished run. Missing folders above
    ``path`` are made when it is written, so the nearest one that exists must be a directory
    this process may write in (not a file, a link to nowhere or a read-only folder); ``file``:
    a file goes there, which cannot replace a directory."""
    if file and path.is_dir():
        return f"{path} is a directory; give the path of a file to write"
    below = next((parent for parent in path.parents if os.path.lexists(parent)), Path("."))
    if not below.is_dir():
        return f"{path} cannot be written: {below} is not a directory"
    if not os.access(below, os.W_OK | os.X_OK):
        return f"{path} cannot be written: {below} is not writable"
    return None


def output_file(text: str) -> Path:
    """An argparse ``type`` for a file a command writes when it is done, refused at once when it
    can never be written (see :func:`unwritable`)."""
    path = Path(text)
    problem = unwritable(path, file=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def work_directory(text: str) -> Path:
    """An argparse ``type`` for a directory a command creates or reuses: refused at once when
    the path is a file or can never be made (see :func:`unwritable`)."""
    path = Path(text)
    if os.path.lexists(path) and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} cannot be a directory: it exists and is not one")
    problem = unwritable(path, file=False)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def add_json(parser: argparse.ArgumentParser, what: str = "the metrics") -> None:
    """``--json PATH``: also write ``what`` there (atomically)."""
    parser.add_argument("--json", type=output_file, metavar="PATH", help=f"also write {what} here as JSON")


def add_output(parser: argparse.ArgumentParser, what: str, *, metavar: str = "DIR",
               required: bool = True) -> None:
    """``--out`` and ``--overwrite``; check them with :func:`check_output` before work."""
    parser.add_argument("--out", type=Path, required=required, metavar=metavar, help=f"where to write {what}")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def check_output(args: argparse.Namespace, *, flag: str = "--out", file: bool = False) -> None:
    """Fail before the work, not after it, when ``--out`` (or another output ``flag`` replaced
    along with it by ``--overwrite``) can never be written (see :func:`unwritable`; ``file``:
    the command writes a file there, not a directory) or exists and may not be replaced. An
    optional flag that was not given passes."""
    path = getattr(args, flag.lstrip("-").replace("-", "_"))
    if path is None:
        return
    problem = unwritable(path, file=file)
    if problem:
        raise InvalidArgumentError(f"{flag} {problem}")
    if os.path.lexists(path) and not args.overwrite:
        raise OutputExistsError(f"{path} already exists (pass --overwrite to replace it)")


def add_records(parser: argparse.ArgumentParser, what: str, *, required: bool = True) -> None:
    """``--records NPZ``: recorded data a command reads (InFi records, MLink output tables)."""
    parser.add_argument("--records", type=Path, required=required, metavar="NPZ", help=what)


def add_input_shapes(parser: argparse.ArgumentParser) -> None:
    """``--input-shape NAME=D0,D1,...`` (repeatable): fix an ONNX graph's symbolic input
    dimensions; every ``split`` command that reads a graph takes it, and the same values make
    the same graph (a profile is tied to the graph as its shapes were fixed)."""
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="fix a symbolic input dimension (a name keeps it symbolic); repeatable")


def input_shapes(values: list[str]) -> dict[str, list[int | str]] | None:
    """The shapes :func:`add_input_shapes` collected, for ``SplitGraph.load`` (None: none given)."""
    shapes: dict[str, list[int | str]] = {}
    for value in values:
        name, _, dims = value.partition("=")
        if not name or not dims:
            raise InvalidArgumentError(f"--input-shape {value!r}: expected NAME=D0,D1,...")
        shapes[name] = [int(d) if d.isdigit() else d for d in dims.split(",")]
    return shapes or None


def add_seed(parser: argparse.ArgumentParser, what: str = "the random draws", default: int = 0) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"seed of {what} (default {default})")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_budget(parser: argparse.ArgumentParser, *, costs: tuple[str, ...] = ("ms",), required: bool = False,
               default_fraction: float | None = None) -> None:
    """``--budget X`` (cost units per step) or ``--budget-fraction F`` (of running everything),
    and ``--cost`` when more than one cost can be limited."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--budget", type=positive(float), metavar="X",
                       help=f"cost per step (in --cost units: {', '.join(costs)})")
    default = f" (default {default_fraction})" if default_fraction is not None else ""
    group.add_argument("--budget-fraction", type=fraction, metavar="F",
                       help=f"the budget as a fraction of running everything{default}")
    if len(costs) > 1:
        parser.add_argument("--cost", default=costs[0], choices=costs,
                            help=f"what the budget limits (default {costs[0]})")
    else:
        parser.set_defaults(cost=costs[0])


def add_bench(parser: argparse.ArgumentParser, quick: str) -> None:
    """``--quick``, ``--json`` and ``--workdir``: what every ``coinfer <capability> bench`` takes."""
    parser.add_argument("--quick", action="store_true", help=quick)
    add_json(parser)
    parser.add_argument("--workdir", type=work_directory, metavar="DIR",
                        help="keep generated data here and reuse it (default: a temporary directory)")


def port_number(text: str) -> int:
    """An argparse ``type`` for a TCP port (0 lets the system choose one)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535], got {text}")
    return value


def add_service(parser: argparse.ArgumentParser, port: int) -> None:
    """Where a service listens, how it authenticates and how long it waits for slow clients:
    every ``coinfer <capability> serve``; run it with ``uvicorn.run(app, **service_options(args))``."""
    from coinfer.sdk.service import ConnectionLimits

    limits = ConnectionLimits()
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=port_number, default=port, help=f"(default {port})")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="file holding the bearer token (default: $COINFER_TOKEN, else a fresh one "
                             "printed once)")
    parser.add_argument("--max-request-mib", type=positive(int), default=64, metavar="N",
                        help="largest request body accepted (default 64)")
    parser.add_argument("--idle-timeout", type=positive(int), default=limits.idle_seconds, metavar="S",
                        help="close a connection silent for S seconds while the service waits on it: before "
                             f"or between requests, or inside one (default {limits.idle_seconds})")
    parser.add_argument("--header-timeout", type=positive(int), default=limits.header_seconds, metavar="S",
                        help="a request's headers must arrive within S seconds "
                             f"(default {limits.header_seconds})")
    parser.add_argument("--min-body-rate", type=positive(int), default=limits.min_body_rate, metavar="B",
                        help="bytes per second a request body must average after --idle-timeout seconds "
                             f"(default {limits.min_body_rate})")


def add_daemon(parser: argparse.ArgumentParser, port: int, reference: str) -> None:
    """The flags of a daemon run from one configuration file (``coinfer edge gateway``,
    ``coinfer cloud serve``): ``--config`` and the ``--host``, ``--port`` and ``--token-file``
    that override its ``[server]`` table (``None`` when not given); ``reference`` names the
    page describing the file."""
    parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                        help=f"the daemon's TOML configuration (see {reference})")
    parser.add_argument("--host", help="bind address, over [server] host (default loopback only)")
    parser.add_argument("--port", type=port_number, help=f"over [server] port (default {port})")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help="file holding the bearer token, over [server] token_file (default: "
                             "$COINFER_TOKEN, else a fresh one printed once)")


def service_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``uvicorn.run`` keyword arguments of the flags :func:`add_service` added."""
    from coinfer.sdk.service import ConnectionLimits, uvicorn_options

    limits = ConnectionLimits(idle_seconds=args.idle_timeout, header_seconds=args.header_timeout,
                              min_body_rate=args.min_body_rate)
    return uvicorn_options(args.host, args.port, limits)
