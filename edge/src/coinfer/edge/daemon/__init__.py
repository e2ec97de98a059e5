"""The edge gateway daemon: ``coinfer edge gateway --config gateway.toml``.

One process tree hosts, as one TOML file configures it, everything the edge tier serves:
live camera streams gated by PacketGame with the detectors and a per-stream InFi skip
filter (:mod:`~coinfer.edge.daemon.streams`, :mod:`~coinfer.edge.daemon.filtering`),
camera-gate uploads, and the InFi, split and evolution services
(:mod:`~coinfer.edge.daemon.services`), on one port, behind one token, with ``/healthz``,
Prometheus ``/metrics``, ``/v1/status`` and a status page (:mod:`~coinfer.edge.daemon.app`).
SIGHUP reloads the file, SIGTERM drains (:mod:`~coinfer.edge.daemon.process`).

Modules: :mod:`~coinfer.edge.daemon.config` (the file), :mod:`~coinfer.edge.daemon.events`
(log lines), :mod:`~coinfer.edge.daemon.telemetry` (metrics),
:mod:`~coinfer.edge.daemon.status_page` (the page), :mod:`~coinfer.edge.daemon.gateway_daemon`
(the state and reloads).
"""
