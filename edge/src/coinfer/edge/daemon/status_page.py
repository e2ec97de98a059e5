"""The daemon's status page: one server-rendered HTML page an operator opens in a browser.

Prometheus and Grafana are how a fleet is watched; an operator at one edge box wants to see
at a glance that the cameras run, what the budget is and what broke, without installing
anything. The page is rendered from the same status ``/v1/status`` answers, carries its own
style, loads nothing from elsewhere and needs no JavaScript (the edge box may have no
Internet, and the page is behind the token like every route); it refreshes itself every
few seconds. Every value from outside (stream names, URLs, error messages) is escaped.

Example:

>>> page = render_status_page({"version": "0.1.0", "config": "/etc/coinfer/gateway.toml",
...     "listen": "http://127.0.0.1:8100", "uptime_s": 75.0, "services": ["streams"],
...     "gate": {"budget_fraction": 0.4, "tasks": ["faces"], "policy": "temporal"},
...     "streams": [{"name": "door<1>", "url": "door.mp4", "state": "running", "packets": 100,
...                  "decoded": 40, "inferred": 20, "decode_saved": 0.6, "filter": None,
...                  "filter_skip_rate": None, "errors": 0, "last_error": None}],
...     "uploads": None, "infi": None, "split": None, "evolve": None,
...     "reloads": {"applied": 0, "refused": 0, "last": None}, "errors": []})
>>> "Decode budget" in page, "40%" in page, "door&lt;1&gt;" in page, "<script" in page
(True, True, True, False)
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["REFRESH_SECONDS", "render_status_page"]

#: How often the page reloads itself.
REFRESH_SECONDS = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2329; background: #f6f7f9; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.meta { color: #5b6570; margin-bottom: 1em; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; }
.card { background: #fff; border: 1px solid #d8dde3; border-radius: 6px; padding: .6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { border: 1px solid #d8dde3; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.running { color: #137333; } .failed, .error { color: #b3261e; } .retrying, .warning { color: #9a6700; }
.none { color: #5b6570; font-style: italic; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


class _Number(str):
    """A table cell aligned as a number."""


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table of already escaped cells."""
    body = []
    for row in rows:
        cells = [f'<td class="n">{cell}</td>' if isinstance(cell, _Number) else f"<td>{cell}</td>"
                 for cell in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        return f'<p class="none">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def _streams(streams: list[dict[str, Any]]) -> str:
    rows = ([_e(s["name"]), _e(s["url"]), f'<span class="{_e(s["state"])}">{_e(s["state"])}</span>',
             _Number(s["packets"]), _Number(s["decoded"]), _Number(s["inferred"]),
             _Number(_percent(s["decode_saved"])),
             _e(s["filter"] or "none"), _Number(_percent(s["filter_skip_rate"])), _Number(s["errors"]),
             _e(s["last_error"] or "")] for s in streams)
    return _table(("Stream", "Source", "State", "Packets", "Decoded", "Inferred", "Decode saved", "Filter",
                   "Filter skip rate", "Errors", "Last error"), rows, "No streams configured.")


def _uploads(uploads: dict[str, Any] | None) -> str:
    if uploads is None:
        return '<p class="none">Camera uploads are off (no [uploads] table).</p>'
    rows = ([_e(s["stream"]), *(_Number(s[key]) for key in ("requests", "packets_received", "packets_decoded",
                                                             "frames_inferred", "decode_errors"))]
            for s in uploads["streams"])
    return _table(("Camera", "Requests", "Packets received", "Packets decoded", "Frames inferred",
                   "Decode errors"), rows, "No camera has uploaded yet.")


def _services(status: dict[str, Any]) -> str:
    rows = []
    for name in status["services"]:
        facts = status.get(name)
        if name == "streams":
            detail = f"{len(status['streams'])} stream(s)"
        elif name == "uploads":
            detail = f"{len(facts['streams'])} camera(s) uploading" if facts else ""
        elif isinstance(facts, dict):
            detail = ", ".join(f"{key} {value}" for key, value in facts.items()
                               if not isinstance(value, dict | list))
        else:
            detail = ""
        rows.append([_e(name), _e(detail)])
    return _table(("Service", "Now"), rows, "Nothing is hosted.")


def _errors(errors: list[dict[str, Any]]) -> str:
    rows = ([_e(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))),
             f'<span class="{_e(event["level"])}">{_e(event["level"])}</span>', _e(event["message"])]
            for event in reversed(errors))
    return _table(("When", "Level", "What"), rows, "No errors.")


def _mlink(mlink: dict[str, Any] | None) -> str:
    """One line naming the models MLink's plan runs and those it predicts."""
    if mlink is None:
        return ""
    return f'<div class="meta">MLink plan: {_e(mlink["plan_line"])}</div>'


def render_status_page(status: dict[str, Any]) -> str:
    """The HTML page of a ``/v1/status`` answer."""
    gate, streams = status["gate"], status["streams"]
    packets = sum(stream["packets"] for stream in streams)
    decoded = sum(stream["decoded"] for stream in streams)
    saved = 1 - decoded / packets if packets else None
    frames = sum(stream.get("filter_frames", 0) for stream in streams)
    skipped = sum(stream.get("filter_skipped", 0) for stream in streams)
    reloads = status["reloads"]
    cards = [("Decode budget", _percent(gate["budget_fraction"])), ("Decode saved", _percent(saved)),
             ("Filter skip rate", _percent(skipped / frames if frames else None)),
             ("Streams running", f"{sum(s['state'] == 'running' for s in streams)} / {len(streams)}"),
             ("Errors", str(sum(stream["errors"] for stream in streams)))]
    card_html = "".join(f'<div class="card">{_e(label)}<b>{_e(value)}</b></div>' for label, value in cards)
    last = f"; last: {_e(reloads['last'])}" if reloads.get("last") else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coinfer edge gateway</title><style>{_STYLE}</style></head>
<body>
<h1>coinfer edge gateway</h1>
<div class="meta">version {_e(status['version'])} &middot; {_e(status['listen'])} &middot; up
{_e(_uptime(status['uptime_s']))} &middot; config {_e(status['config'])} &middot; tasks
{_e(', '.join(gate['tasks']))} ({_e(gate['policy'])}) &middot; reloads {_e(reloads['applied'])} applied,
{_e(reloads['refused'])} refused{last}</div>{_mlink(status.get('mlink'))}
<div class="cards">{card_html}</div>
<h2>Streams</h2>{_streams(streams)}
<h2>Camera uploads</h2>{_uploads(status['uploads'])}
<h2>Services</h2>{_services(status)}
<h2>Recent errors</h2>{_errors(status['errors'])}
</body></html>
"""
