"""The gateway daemon's configuration file: one TOML file for everything the edge hosts.

An operator edits one file (``gateway.toml``) and runs ``coinfer edge gateway --config
gateway.toml``; each table turns one thing on: ``[[streams]]`` (live cameras gated by
PacketGame, each with an optional InFi skip filter), ``[mlink]`` (MLink budgeted serving on
those streams instead of every detector), ``[uploads]`` (camera-gate uploads), ``[infi]``,
``[split]`` and ``[evolve]`` (the edge halves of those services). ``[server]``
and ``[gate]`` hold what they share. The file is checked whole before anything starts, and
again on every reload (SIGHUP), so a mistake is one line naming the file, the line and the
key (:mod:`coinfer.sdk.config_file`), never a half-applied configuration. Unknown tables and
keys are refused: a typo would otherwise silently leave a default in force. Relative paths
are relative to the file's folder, so a configuration directory can be moved whole.

Example:

>>> import pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "cam0.mp4").write_bytes(b"")
0
>>> _ = (folder / "gateway.toml").write_text('''
... [gate]
... budget_fraction = 0.4
...
... [[streams]]
... name = "door"
... url = "cam0.mp4"
... loop = true
...
... [uploads]
... ''')
>>> config = load_config(folder / "gateway.toml")
>>> config.server.port, config.gate.budget_fraction, config.streams[0].loop, config.services
(8100, 0.4, True, ('streams', 'uploads'))
>>> config.streams[0].url == str(folder / "cam0.mp4")
True
>>> _ = (folder / "gateway.toml").write_text('[server]\\nport = 8100\\nhots = "0.0.0.0"\\n[uploads]\\n')
>>> load_config(folder / "gateway.toml")
Traceback (most recent call last):
...
coinfer.sdk.config_file.ConfigError: .../gateway.toml:3: [server] hots is not a known key; expected one of ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from coinfer.edge.daemon.mlink_serving import MlinkSettings
from coinfer.sdk.config_file import ConfigFile, ConfigTable
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import ConnectionLimits

__all__ = ["TABLES", "EvolveConfig", "GateConfig", "GatewayConfig", "InfiConfig", "ServerConfig",
           "SplitConfig", "StreamConfig", "UploadsConfig", "load_config"]

#: The tables a configuration may hold, in the order the reference (docs/gateway.md) lists them.
TABLES = ("server", "gate", "streams", "mlink", "uploads", "infi", "split", "evolve")
#: A URL FFmpeg reads (rtsp://, tcp://, http://, ...); anything else is a path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Stream names appear in metric labels, URLs and log lines.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_POLICIES = ("packetgame", "temporal", "round-robin", "random", "decode-all")


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where the one HTTP server listens, its token and its limits."""

    host: str = "127.0.0.1"
    port: int = 8100
    token_file: Path | None = None
    max_request_mib: int = 64
    idle_timeout: int = ConnectionLimits.idle_seconds
    header_timeout: int = ConnectionLimits.header_seconds
    min_body_rate: int = ConnectionLimits.min_body_rate
    max_header_kib: int = ConnectionLimits.max_header_bytes >> 10
    drain_seconds: int = 10

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mib << 20

    @property
    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(idle_seconds=self.idle_timeout, header_seconds=self.header_timeout,
                                min_body_rate=self.min_body_rate, max_header_bytes=self.max_header_kib << 10)


@dataclass(frozen=True)
class GateConfig:
    """``[gate]``: how every stream is gated (PacketGame's budget, policy and tasks), and
    ``mlink``, the ``[mlink]`` table when the streams serve its plan (its models are the tasks)."""

    budget_fraction: float = 0.5
    tasks: tuple[str, ...] = ("faces",)
    policy: str | None = None
    predictor: Path | None = None
    workers: int = 1
    realtime: bool = True
    mlink: MlinkSettings | None = None

    def runtime_changes(self, other: GateConfig) -> list[str]:
        """What differs from ``other`` but the budget (it restarts the streams): ``[gate]`` keys
        and ``[mlink]``."""
        return [f"[{item.name}]" if item.name == "mlink" else f"[gate] {item.name}" for item in fields(self)
                if item.name != "budget_fraction" and getattr(self, item.name) != getattr(other, item.name)]


@dataclass(frozen=True)
class StreamConfig:
    """One ``[[streams]]`` entry: a named camera (a URL, or a file standing in for one).

    ``filter_digest`` identifies the filter's contents, so that a reload sees a filter
    retrained in place.
    """

    name: str
    url: str
    loop: bool = False
    filter: Path | None = None
    filter_digest: str = ""

    @property
    def live(self) -> bool:
        """Whether the source is a network URL (it may stall and is reconnected) rather than a file."""
        return bool(_URL.match(self.url))


@dataclass(frozen=True)
class UploadsConfig:
    """``[uploads]``: the ingest of camera-gate uploads (:mod:`coinfer.edge.gateway`)."""

    tasks: tuple[str, ...] = ()
    max_streams: int = 64
    max_packets_per_request: int = 1024


@dataclass(frozen=True)
class InfiConfig:
    """``[infi]``: the InFi detection service (:mod:`coinfer.edge.infi.service`)."""

    task: str = "faces"


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``: the split tail service (:mod:`coinfer.edge.split.service`) of one bundle."""

    bundle: Path
    max_batch: int = 16
    threads: int = 1
    workers: int = 1
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class EvolveConfig:
    """``[evolve]``: the evolution service (:mod:`coinfer.edge.evolve.service`) of a JSON configuration."""

    config: Path
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class GatewayConfig:
    """A whole configuration file, checked; ``None`` for a service table that is absent."""

    path: Path
    server: ServerConfig = ServerConfig()
    gate: GateConfig = GateConfig()
    streams: tuple[StreamConfig, ...] = ()
    uploads: UploadsConfig | None = None
    infi: InfiConfig | None = None
    split: SplitConfig | None = None
    evolve: EvolveConfig | None = None

    @property
    def services(self) -> tuple[str, ...]:
        """What this configuration hosts, in :data:`TABLES` order."""
        hosted = [] if not self.streams else ["streams"]
        hosted += [name for name in ("uploads", "infi", "split", "evolve") if getattr(self, name) is not None]
        return tuple(hosted)

    def with_overrides(self, overrides: Mapping[str, Any]) -> GatewayConfig:
        """This configuration with ``[server]`` keys replaced (the command line's ``--host``,
        ``--port``, ``--token-file``); ``None`` values leave the file's."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, server=replace(self.server, **given)) if given else self

    def restart_changes(self, other: GatewayConfig) -> list[str]:
        """What differs from ``other`` that a reload cannot apply: the server and the services."""
        changed = [f"[server] {item.name}" for item in fields(ServerConfig)
                   if getattr(self.server, item.name) != getattr(other.server, item.name)]
        changed += [f"[{name}]" for name in ("uploads", "infi", "split", "evolve")
                    if getattr(self, name) != getattr(other, name)]
        return changed


def load_config(path: str | Path) -> GatewayConfig:
    """Read and check the configuration at ``path``; every error is one :class:`ConfigError`
    line naming the file, the line and the key."""
    config = ConfigFile.read(path)
    config.check_known(TABLES)
    gate = _gate(config.table("gate"))
    if "mlink" in config.data:
        gate = _mlink(config.table("mlink"), gate, "tasks" in config.table("gate"))
    loaded = GatewayConfig(
        path=config.path, server=_server(config.table("server")), gate=gate,
        streams=_streams(config, gate),
        uploads=_optional(config, "uploads", _uploads), infi=_optional(config, "infi", _infi),
        split=_optional(config, "split", _split), evolve=_optional(config, "evolve", _evolve))
    if gate.mlink is not None and not loaded.streams:
        raise config.error(config.line_of(None, "mlink"), "[mlink] serves the streams: add [[streams]]")
    if not loaded.services:
        raise config.error(None, "configures nothing to host: add [[streams]], [uploads], [infi], [split] "
                                 "or [evolve]")
    return loaded


def _optional(config: ConfigFile, name: str, read: Any) -> Any:
    return read(config.table(name)) if name in config.data else None


def _where(table: ConfigTable, key: str) -> str:
    """``FILE:LINE: [table] key`` of ``key`` (for errors found when the service is built)."""
    line = table.config.line_of((table.name, table.index), key) or table.config.line_of(None, table.name)
    return f"{table.config.path}:{line}: {table.label} {key}"


def _server(table: ConfigTable) -> ServerConfig:
    defaults = ServerConfig()
    server = ServerConfig(
        host=table.string("host", defaults.host),
        port=table.integer("port", defaults.port, low=0, high=65535),
        token_file=table.path("token_file"),
        max_request_mib=table.integer("max_request_mib", defaults.max_request_mib, low=1, high=4096),
        idle_timeout=table.integer("idle_timeout", defaults.idle_timeout, low=1, high=86400),
        header_timeout=table.integer("header_timeout", defaults.header_timeout, low=1, high=86400),
        min_body_rate=table.integer("min_body_rate", defaults.min_body_rate, low=1),
        max_header_kib=table.integer("max_header_kib", defaults.max_header_kib, low=1, high=1024),
        drain_seconds=table.integer("drain_seconds", defaults.drain_seconds, low=1, high=3600))
    table.check_known()
    return server


def _gate(table: ConfigTable) -> GateConfig:
    from coinfer.edge.models.detectors import DETECTORS

    defaults = GateConfig()
    budget = table.number("budget_fraction", defaults.budget_fraction, low=0, high=1)
    if budget <= 0:
        raise table.error("budget_fraction", f"must be above 0 (a fraction of decode-all), got {budget}")
    tasks = table.strings("tasks", defaults.tasks, choices=sorted(DETECTORS))
    if not tasks:
        raise table.error("tasks", "must name at least one detection task")
    policy = table.string("policy", choices=_POLICIES)
    predictor = table.path("predictor")
    gate = GateConfig(budget_fraction=budget, tasks=tasks, policy=policy, predictor=predictor,
                      workers=table.integer("workers", defaults.workers, low=1, high=64),
                      realtime=table.boolean("realtime", defaults.realtime))
    table.check_known()
    chosen = policy or ("packetgame" if predictor is not None else "temporal")
    if chosen == "packetgame" and predictor is None:
        raise table.error("policy", "packetgame needs a trained predictor: set predictor = \"DIR\"")
    if predictor is not None and chosen != "packetgame":
        raise table.error("predictor", f"is only used by the packetgame policy, not {chosen!r}")
    if predictor is not None:
        from coinfer.sdk.gate.predictor import ContextualPredictor

        _check(table, "predictor", ContextualPredictor.load, predictor)
    return gate


def _mlink(table: ConfigTable, gate: GateConfig, tasks_given: bool) -> GateConfig:
    """``[mlink]``, checked (the links and the crowd CNN loaded); the streams' tasks become the
    links' models. ``costs`` is an inline table of model -> ms."""
    from coinfer.edge.daemon.mlink_serving import inspect_links

    raw_costs = table.values.get("costs")
    rest = ConfigTable(table.config, table.name, table.index,
                       {key: value for key, value in table.values.items() if key != "costs"})
    links = _required_path(rest, "links")
    if not links.is_dir():
        raise rest.error("links", f"{links}: no such link graph directory (coinfer mlink train --out)")
    budget = rest.number("budget", required=True)
    if not budget > 0:
        raise rest.error("budget", f"must be above 0 (ms of model time per frame), got {budget}")
    period = rest.integer("period", 100, low=1, high=1_000_000)
    fraction = rest.number("profile_fraction", 0.01, low=0, high=1)
    crowd = rest.path("crowd")
    rest.check_known()
    if crowd is not None and not crowd.exists():
        raise rest.error("crowd", f"{crowd}: no such crowd CNN artifact")
    info = _check(rest, "crowd" if crowd is not None else "links", inspect_links, links, crowd)
    if tasks_given and set(gate.tasks) != set(info.models):
        raise table.config.table("gate").error(
            "tasks", f"must name the [mlink] links' models {list(info.models)} (or be left out), got "
                     f"{list(gate.tasks)}")
    costs: tuple[tuple[str, float], ...] = ()
    if raw_costs is not None:
        if not isinstance(raw_costs, dict):
            raise table.error("costs", f"must be an inline table of model = ms, got {raw_costs!r}")
        if set(raw_costs) != set(info.models):
            raise table.error("costs", f"must give every model of the links {list(info.models)} a cost, "
                                       f"got {sorted(raw_costs)}")
        bad = {name: value for name, value in raw_costs.items()
               if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0}
        if bad:
            raise table.error("costs", f"must be positive numbers of ms, got {bad}")
        costs = tuple((name, float(raw_costs[name])) for name in info.models)
    settings = MlinkSettings(links=links, models=info.models, budget=budget, costs=costs, period=period,
                             profile_fraction=fraction, crowd=crowd, digest=info.digest)
    return replace(gate, tasks=info.models, mlink=settings)


def _streams(config: ConfigFile, gate: GateConfig) -> tuple[StreamConfig, ...]:
    from coinfer.edge.daemon.filtering import inspect_skip_filter

    streams: list[StreamConfig] = []
    for table in config.tables("streams"):
        name = table.string("name", f"stream{table.index}")
        if not _NAME.match(name):
            raise table.error("name", f"must be 1-64 letters, digits, '.', '_' or '-', got {name!r}")
        if any(stream.name == name for stream in streams):
            raise table.error("name", f"{name!r} names two streams")
        url = table.string("url", required=True)
        if not _URL.match(url):
            local = table.config.path.parent / url
            if not local.is_file():
                raise table.error("url", f"{local}: no such video file")
            url = str(local)
        source = table.path("filter")
        loop = table.boolean("loop", False)
        table.check_known()
        digest = ""
        if source is not None:
            info = _check(table, "filter", inspect_skip_filter, source)
            unknown = sorted(set(info.tasks) - set(gate.tasks))
            if unknown:
                runs = "the [mlink] links" if gate.mlink is not None else "[gate] tasks"
                raise table.error("filter", f"filters task(s) {unknown}, which {runs} "
                                            f"{list(gate.tasks)} do not run")
            digest = info.digest
        streams.append(StreamConfig(name=name, url=url, loop=loop, filter=source, filter_digest=digest))
    return tuple(streams)


def _check(table: ConfigTable, key: str, load: Any, *args: Any) -> Any:
    """``load(*args)``, with a failure reported at ``key``'s line."""
    try:
        return load(*args)
    except CoinferError as error:
        raise table.error(key, f"is unusable: {error}") from error


def _uploads(table: ConfigTable) -> UploadsConfig:
    from coinfer.edge.models.detectors import DETECTORS

    defaults = UploadsConfig()
    uploads = UploadsConfig(
        tasks=table.strings("tasks", (), choices=sorted(DETECTORS)),
        max_streams=table.integer("max_streams", defaults.max_streams, low=1, high=4096),
        max_packets_per_request=table.integer("max_packets_per_request", defaults.max_packets_per_request,
                                              low=1, high=65536))
    table.check_known()
    return uploads


def _infi(table: ConfigTable) -> InfiConfig:
    from coinfer.edge.models.detectors import DETECTORS

    infi = InfiConfig(task=table.string("task", InfiConfig.task, choices=sorted(DETECTORS)))
    table.check_known()
    return infi


def _required_path(table: ConfigTable, key: str) -> Path:
    """A path the table must give, relative to the configuration file's folder."""
    return table.config.path.parent / str(table.string(key, required=True))


def _split(table: ConfigTable) -> SplitConfig:
    bundle = _required_path(table, "bundle")
    if not bundle.is_dir():
        raise table.error("bundle", f"{bundle}: no such bundle directory (OUT/edge of coinfer split export)")
    split = SplitConfig(bundle=bundle, max_batch=table.integer("max_batch", 16, low=1, high=1024),
                        threads=table.integer("threads", 1, low=1, high=256),
                        workers=table.integer("workers", 1, low=1, high=64), where=_where(table, "bundle"))
    table.check_known()
    return split


def _evolve(table: ConfigTable) -> EvolveConfig:
    from coinfer.edge.evolve.service import EvolutionConfig

    path = _required_path(table, "config")
    _check(table, "config", EvolutionConfig.load, path)
    evolve = EvolveConfig(config=path, where=_where(table, "config"))
    table.check_known()
    return evolve
