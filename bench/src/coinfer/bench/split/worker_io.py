"""JSON lines between the latency bench and its device and edge worker processes.

Why pipes and not HTTP: the workers live in a network namespace whose only link is the
shaped one. A control channel over that link would queue behind the measured requests (a
0.5 Mbit/s link delays a command by seconds) and bias what is measured; stdin/stdout pipes
cross namespaces and cost the link nothing.

The worker side (:func:`serve`) announces ``{"ready": PID}``, waits for a ``go`` line (so
that the bench can put it into a CPU-quota cgroup before it does any work), then answers
one JSON line per command: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"..."}``. The bench side is :class:`WorkerProcess`. Only the standard library and the sdk's
errors are imported here.

Example (bench side)::

    worker = WorkerProcess([sys.executable, "-m", "coinfer.bench.split.device_worker"], log)
    pid = worker.wait_ready()          # move pid into a cgroup here
    worker.go()
    result = worker.call("ping", url=url, count=3)
    worker.close()
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from coinfer.sdk.errors import CoinferError, one_line

#: The line a worker waits for before it does any work.
GO = "go"
#: The command that ends a worker's loop.
EXIT = "exit"


class WorkerError(CoinferError):
    """A worker process that failed to start, died, timed out or refused a command."""


def serve(handlers: Mapping[str, Callable[..., Any]]) -> None:
    """The worker's loop: ready, wait for ``go``, then answer commands until ``exit`` or EOF.

    The protocol keeps the process's original stdout; file descriptor 1 is pointed at stderr
    so that a library printing to stdout (ONNX Runtime's C++ logger, uvicorn) cannot corrupt
    the JSON lines.
    """
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _write(channel, {"ready": os.getpid()})
    if sys.stdin.readline().strip() != GO:
        return
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            command, args = request["cmd"], request.get("args", {})
            if command == EXIT:
                _write(channel, {"ok": True, "result": None})
                return
            if command not in handlers:
                raise WorkerError(f"unknown command {command!r}; known: {', '.join(sorted(handlers))}")
            reply = {"ok": True, "result": handlers[command](**args)}
        except Exception as error:  # every failure goes back as one line; the loop goes on
            reply = {"ok": False, "error": f"{type(error).__name__}: {one_line(error)}"}
        _write(channel, reply)


def _write(channel: IO[str], message: Any) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


class WorkerProcess:
    """A worker started from ``argv`` (a ``python -m`` command, possibly wrapped in
    ``ip netns exec``), its stderr appended to ``log``.

    A reader thread queues the worker's stdout lines so that every wait has a timeout and a
    dead worker is reported with the tail of its log rather than a hang.
    """

    def __init__(self, argv: Sequence[str], log: Path, *, name: str = "worker",
                 env: Mapping[str, str] | None = None) -> None:
        self.name, self.log = name, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        try:
            self.process = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=self._log_file, text=True, bufsize=1,
                                            env=dict(env) if env is not None else None)
        except OSError as error:
            self._log_file.close()
            raise WorkerError(f"cannot start the {name} ({argv[0]}): {one_line(error)}") from error
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"the {self.name} did not answer within {timeout:.0f} s; log: "
                              f"{self.log_tail()}") from None
        if line is None:
            self.process.wait(timeout=5)
            raise WorkerError(f"the {self.name} exited (status {self.process.returncode}); log: "
                              f"{self.log_tail()}")
        try:
            return json.loads(line)
        except ValueError:
            raise WorkerError(f"the {self.name} wrote a line that is not JSON: {line[:120]!r}") from None

    def wait_ready(self, timeout: float = 60.0) -> int:
        """The PID the worker reports (the process itself, even behind ``ip netns exec``)."""
        message = self._next(timeout)
        if not isinstance(message, dict) or not isinstance(message.get("ready"), int):
            raise WorkerError(f"the {self.name} did not start with a ready line: {str(message)[:120]}")
        return int(message["ready"])

    def go(self) -> None:
        self._send(GO)

    def call(self, command: str, timeout: float = 600.0, **args: Any) -> Any:
        """Run ``command`` in the worker and return its result; a refusal is a :class:`WorkerError`."""
        self._send(json.dumps({"cmd": command, "args": args}))
        reply = self._next(timeout)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise WorkerError(f"the {self.name} answered {command!r} with {str(reply)[:120]}")
        if not reply["ok"]:
            raise WorkerError(f"the {self.name} failed {command!r}: {reply.get('error')}")
        return reply.get("result")

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"the {self.name} is gone (status {self.process.poll()}); log: "
                              f"{self.log_tail()}") from None

    def log_tail(self, chars: int = 600) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " ".join(text[-chars:].split()) or "(empty)"

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit; kill it (this process only, by its PID) if it does not."""
        if self.process.poll() is None:
            try:
                self._send(json.dumps({"cmd": EXIT}))
                self.process.wait(timeout=timeout)
            except (WorkerError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=timeout)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log_file.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EXIT", "GO", "WorkerError", "WorkerProcess", "serve"]
