"""Real ``coinfer ... serve`` processes on loopback for the tour's stages.

Why processes: the point of the STIP and split stages is that the other party is a separate
program reached over HTTP with a bearer token, as in a deployment, not a function call. A
:class:`ServiceProcess` starts the command as its own Python process on ``127.0.0.1`` with the
token in ``COINFER_TOKEN``, waits until a route answers with the token (or the process exits,
whose last log line is then the error), and stops it on leaving the ``with`` block, Ctrl-C
included. The server's log goes to a file, so a chatty server never blocks on a full pipe.

Example::

    with ServiceProcess(["split", "serve", "--bundle", "out/edge"], "/v1/split/info", log) as server:
        client = SplitClient.create_from_bundle("out/device", server.url, server.token)

>>> last_line(b"starting\\nINFO: ready\\n\\n")
'INFO: ready'
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.service import TOKEN_ENV

#: A guard against a server that neither answers nor exits; a healthy one answers long before.
START_DEADLINE_S = 600.0
#: How long a stopped server may take to exit before it is killed.
STOP_GRACE_S = 30.0


def last_line(log: bytes) -> str:
    """The last non-empty line of a log (what a server that died said last)."""
    lines = [line.strip() for line in log.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing logged)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """``coinfer ARGV --host 127.0.0.1 --port P`` as a child process until the block ends;
    ready once ``GET ready_path`` answers 200 with the token. ``log`` receives its output."""

    def __init__(self, argv: Sequence[str], ready_path: str, log: Path) -> None:
        self.token = secrets.token_urlsafe(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "coinfer.sdk.cli", *argv, "--host", "127.0.0.1",
                     "--port", str(self.port)]
        self.ready_path = ready_path
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start the process (it loads while the caller goes on); :meth:`wait_ready` waits for it."""
        with open(self.log, "wb") as output:
            self._process = subprocess.Popen(
                self.argv, env=dict(os.environ, **{TOKEN_ENV: self.token}), stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        """Wait until the server answers, or fail with its last log line if it exits first."""
        if self._process is None:
            raise CoinferError(f"{self.argv[3:5]} was not started")
        request = urllib.request.Request(self.url + self.ready_path,
                                         headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self._process.poll() is not None:
                raise CoinferError(f"`coinfer {' '.join(self.argv[3:5])}` exited with status "
                                   f"{self._process.returncode}: {last_line(self.log.read_bytes())}")
            if time.monotonic() > deadline:
                raise CoinferError(f"`coinfer {' '.join(self.argv[3:5])}` did not answer on {self.url}")
            time.sleep(0.2)

    def stop(self) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`); its exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> ServiceProcess:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
