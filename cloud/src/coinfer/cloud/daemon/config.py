"""``cloud.toml``: what ``coinfer cloud serve`` hosts, where it listens and what it accepts.

One file configures the whole cloud package, so an operator edits one place and a typo
surfaces at start, named by its line, instead of as a service that silently runs with a
default. The file is read with :class:`~coinfer.sdk.config_file.ConfigFile`; every value is
checked here, before any model is loaded or any port bound, and unknown tables and keys
are refused. Relative paths are relative to the file's folder.

Tables: ``[server]`` (host, port, token file, one body limit and the connection timeouts,
shared by every service), ``[stip]`` (the STIP model server of a published server bundle)
and ``[mlink]`` (the MLink link aggregation service). At least one service is configured.
Evolution (NestEvo) aggregates at the edge, so there is no ``[evolve]`` table here.

Example:

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "server").mkdir()
>>> _ = (folder / "cloud.toml").write_text('[server]\\nport = 8201\\n\\n[stip]\\nbundle = "server"\\n')
>>> config = read_config(folder / "cloud.toml")
>>> config.services, config.server.port, config.stip.bundle == folder / "server"
(('stip',), 8201, True)
>>> config.with_overrides(port=9000).server.port
9000
>>> _ = (folder / "cloud.toml").write_text('[stip]\\nbundle = "server"\\nbatch = 4\\n')
>>> read_config(folder / "cloud.toml")
Traceback (most recent call last):
...
coinfer.sdk.config_file.ConfigError: ...cloud.toml:3: [stip] batch is not a known key; expected one of ...
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from coinfer.cloud.mlink.server import MAX_MIN_CLIENTS, ClientRegistry
from coinfer.sdk.config_file import ConfigError, ConfigFile, ConfigTable
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.robust import AGGREGATES, RobustOptions
from coinfer.sdk.service import ConnectionLimits
from coinfer.sdk.stip.protocol import RESPONSE_LIMITS

__all__ = ["DEFAULT_PORT", "CloudConfig", "MLinkSettings", "ServerSettings", "StipSettings", "config_error",
           "read_config"]

#: Where ``coinfer cloud serve`` listens unless told otherwise (``stip serve`` takes 8000,
#: ``mlink serve`` 8300).
DEFAULT_PORT = 8200
#: The most ``max_request_mib`` may be: a request body is held in memory whole.
MAX_REQUEST_MIB = 4096
#: The tables a configuration may hold.
TABLES = ("server", "stip", "mlink")


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: where the one process listens and what every service's requests must keep."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_file: Path | None = None
    max_request_mib: int = 64
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    source: ConfigTable | None = field(default=None, compare=False, repr=False)

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mib << 20


@dataclass(frozen=True)
class StipSettings:
    """``[stip]``: the STIP model server of one published server bundle, and its session limits."""

    bundle: Path
    max_response_mib: int = RESPONSE_LIMITS.max_payload_bytes >> 20
    max_batch: int = 64
    max_sessions: int = 64
    session_idle_seconds: float = 600.0
    source: ConfigTable | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class MLinkSettings:
    """``[mlink]``: the link aggregation service: the initial links, who may send updates (the
    file ``clients`` and the list read from it), how many close a round, where rounds are kept
    and how updates are combined."""

    links: Path
    clients: Path
    registry: ClientRegistry
    min_clients: int
    state_dir: Path
    rules: RobustOptions = field(default_factory=RobustOptions)
    source: ConfigTable | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CloudConfig:
    """A checked ``cloud.toml``: the server settings and the services it hosts."""

    path: Path
    server: ServerSettings
    stip: StipSettings | None = None
    mlink: MLinkSettings | None = None

    @property
    def services(self) -> tuple[str, ...]:
        """The configured services, in the order they are served."""
        return tuple(name for name in ("stip", "mlink") if getattr(self, name) is not None)

    def with_overrides(self, *, host: str | None = None, port: int | None = None,
                       token_file: Path | None = None) -> CloudConfig:
        """This configuration with the command line's ``--host``, ``--port`` and ``--token-file``
        (those given) in place of the file's."""
        server = self.server
        return dataclasses.replace(self, server=dataclasses.replace(
            server, host=server.host if host is None else host, port=server.port if port is None else port,
            token_file=server.token_file if token_file is None else token_file))


def read_config(path: str | os.PathLike) -> CloudConfig:
    """Parse and check ``path``; any problem is one :class:`~coinfer.sdk.config_file.ConfigError`
    line naming the file, the line and the key (a missing file: ``InputNotFoundError``)."""
    config = ConfigFile.read(Path(path))
    if "evolve" in config.data:
        raise config.error(config.line_of(None, "evolve"),
                           "[evolve] has no cloud half: NestEvo aggregates at the edge (the edge gateway's "
                           "evolution service, `coinfer evolve serve`); remove the table")
    config.check_known(TABLES)
    server = _server(config.table("server"))
    stip = _stip(config.table("stip")) if "stip" in config.data else None
    mlink = _mlink(config.table("mlink")) if "mlink" in config.data else None
    if stip is None and mlink is None:
        raise config.error(None, "configures no service: add a [stip] table (bundle = DIR), an [mlink] table "
                                 "(links, clients, min_clients) or both")
    return CloudConfig(config.path, server, stip, mlink)


def _server(table: ConfigTable) -> ServerSettings:
    defaults = ConnectionLimits()
    settings = ServerSettings(
        host=table.string("host", "127.0.0.1"),
        port=table.integer("port", DEFAULT_PORT, low=0, high=65535),
        token_file=table.path("token_file"),
        max_request_mib=table.integer("max_request_mib", 64, low=1, high=MAX_REQUEST_MIB),
        limits=ConnectionLimits(
            idle_seconds=table.integer("idle_timeout", defaults.idle_seconds, low=1),
            header_seconds=table.integer("header_timeout", defaults.header_seconds, low=1),
            min_body_rate=table.integer("min_body_rate", defaults.min_body_rate, low=1),
            max_header_bytes=table.integer("max_header_kib", defaults.max_header_bytes >> 10, low=1,
                                           high=1 << 10) << 10),
        source=table)
    table.check_known()
    return settings


def _stip(table: ConfigTable) -> StipSettings:
    most = RESPONSE_LIMITS.max_payload_bytes >> 20
    settings = StipSettings(
        bundle=_directory(table, "bundle", "the server bundle of `coinfer stip publish` (OUT/server)"),
        max_response_mib=table.integer("max_response_mib", most, low=1, high=most),
        max_batch=table.integer("max_batch", 64, low=1, high=1 << 16),
        max_sessions=table.integer("max_sessions", 64, low=1, high=1 << 16),
        session_idle_seconds=table.number("session_idle_seconds", 600.0, low=1),
        source=table)
    table.check_known()
    return settings


def _mlink(table: ConfigTable) -> MLinkSettings:
    links = _directory(table, "links", "the link graph artifact of `coinfer mlink train`")
    clients = _required_path(table, "clients")
    if not clients.is_file():
        raise table.error("clients", f"is {clients}, which is not a file (the client list: one 'NAME' or "
                                     "'NAME sha256:HEX' a line)")
    try:
        registry = ClientRegistry.load(clients)
    except CoinferError as error:
        raise table.error("clients", f"cannot be loaded: {error}") from None
    min_clients = table.integer("min_clients", required=True, low=1, high=MAX_MIN_CLIENTS)
    if min_clients > len(registry):
        raise table.error("min_clients", f"is {min_clients}, but only {len(registry)} clients are listed in "
                                         f"{clients}: no round could ever close")
    state_dir = table.path("state_dir") or links.with_name(links.name + "-rounds")
    if os.path.lexists(state_dir) and not state_dir.is_dir():
        raise table.error("state_dir", f"is {state_dir}, which exists and is not a directory")
    defaults = RobustOptions()
    aggregate = table.string("aggregate", defaults.aggregate, choices=AGGREGATES)
    trim = table.number("trim", defaults.trim, low=0, high=0.5)
    if not 0 < trim < 0.5:
        raise table.error("trim", f"must be in (0, 0.5), got {trim}")
    max_growth = _bound(table, "max_growth", defaults.max_growth, low=1.0)
    if max_growth == 1.0:
        raise table.error("max_growth", "must be above 1 (or \"off\"), got 1.0")
    rules = RobustOptions(aggregate, trim=trim,
                          clip_factor=_bound(table, "clip_factor", defaults.clip_factor, low=1.0),
                          max_samples=table.integer("max_samples", defaults.max_samples, low=1),
                          max_growth=max_growth)
    settings = MLinkSettings(links, clients, registry, min_clients, state_dir, rules, source=table)
    table.check_known()
    return settings


def _directory(table: ConfigTable, key: str, what: str) -> Path:
    path = _required_path(table, key)
    if not path.is_dir():
        raise table.error(key, f"is {path}, which is not a directory ({what})")
    return path


def _required_path(table: ConfigTable, key: str) -> Path:
    """A path the table must set (a missing key is an error at the table's line)."""
    return cast(Path, table.path(key, required=True))


def _bound(table: ConfigTable, key: str, default: float, low: float) -> float:
    """A number of at least ``low``, or ``"off"`` for no bound at all (infinity)."""
    if isinstance(table.values.get(key), str):
        table.string(key, choices=("off",))
        return math.inf
    return float(table.number(key, default, low=low))


def config_error(settings: ServerSettings | StipSettings | MLinkSettings, key: str,
                 message: str) -> ConfigError:
    """An error found while starting a service, placed at the line of the ``key`` it came from."""
    if settings.source is None:
        return ConfigError(f"{key} {message}")
    return settings.source.error(key, message)
