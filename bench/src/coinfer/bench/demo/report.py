"""The HTML report of ``coinfer demo``: one self-contained page, every stage with its plots.

Why self-contained: the page is what a user keeps, mails or opens on another machine after
the tour, so it holds everything itself (styles inline, plots as PNG ``data:`` URIs) and
fetches nothing. It is written atomically; nothing opens it.

>>> from coinfer.bench.demo.tour import Plot, StageResult
>>> page = render_report([("gate", "PacketGame", StageResult({"cost_fraction": 0.5}, {"under budget": True},
...                        [Plot("decoded per stream", b"PNG")]), 1.5)], version="1.0", machine={})
>>> "<h2 id=\\"gate\\">gate" in page, "data:image/png;base64,UE5H" in page
(True, True)
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from typing import Any

from coinfer.bench.demo.tour import StageResult
from coinfer.sdk.cli.report import format_value
from coinfer.sdk.fsutil import atomic_write_bytes

#: (name, title, result, seconds) of every stage that ran, in the order they ran.
StageRow = tuple[str, str, StageResult, float]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { margin-bottom: 0.2em; }
section { border-top: 1px solid #ccc; padding-top: 0.5em; margin-top: 1.5em; }
.ok { color: #176317; } .failed { color: #a31515; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
td.value { text-align: right; font-family: monospace; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figure img { max-width: 100%; }
"""


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(key))}</td>"
                    f"<td class=\"value\">{html.escape(format_value(value))}</td></tr>"
                    for key, value in rows.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{cells}</table>"


def _section(name: str, title: str, result: StageResult, seconds: float) -> str:
    status = ("<p class=\"ok\">ok</p>" if result.ok else
              f"<p class=\"failed\">failed: {html.escape(str(result.entry().get('error')))}</p>")
    checks = "".join(f"<li class=\"{'ok' if passed else 'failed'}\">{'passed' if passed else 'FAILED'}: "
                     f"{html.escape(check)}</li>" for check, passed in result.checks.items())
    figures = "".join(
        f"<figure><img alt=\"{html.escape(plot.title)}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(plot.png).decode('ascii')}\"><figcaption>{html.escape(plot.title)}</figcaption>"
        f"</figure>" for plot in result.plots)
    return (f"<section><h2 id=\"{html.escape(name)}\">{html.escape(name)}: {html.escape(title)}</h2>{status}"
            f"<p>{seconds:.1f} s</p>{_table(result.metrics)}"
            + (f"<ul>{checks}</ul>" if checks else "") + figures + "</section>")


def render_report(stages: Sequence[StageRow], *, version: str, machine: Mapping[str, Any]) -> str:
    """The page for ``stages``: a summary table, then a section per stage."""
    summary = {name: ("ok" if result.ok else "FAILED") + f" ({seconds:.1f} s)"
               for name, _, result, seconds in stages}
    body = "".join(_section(*row) for row in stages)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>coinfer {html.escape(version)} demo</title><style>{STYLE}</style></head><body>"
            f"<h1>coinfer {html.escape(version)} demo</h1>{_table(summary)}{_table(machine)}{body}"
            "</body></html>")


def write_report(path: str | os.PathLike, stages: Sequence[StageRow], *, version: str,
                 machine: Mapping[str, Any]) -> None:
    """Write :func:`render_report` to ``path`` atomically."""
    atomic_write_bytes(path, render_report(stages, version=version, machine=machine).encode("utf-8"))
