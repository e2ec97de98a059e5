"""What every coinfer HTTP service shares, whichever tier runs it: its token, its body limit,
its connection limits, its thread.

The services themselves (the edge gateway, the STIP model server) live in their tiers and
build their FastAPI apps there (with :func:`create_service_app`); this module holds the
plumbing they would otherwise each write again. It imports only the standard library;
uvicorn is imported by :func:`uvicorn_options` when a server starts, FastAPI inside
:func:`create_service_app` and :func:`refuse_with`.

Example::

    token = resolve_token(args.token_file)          # --token-file, else COINFER_TOKEN, else fresh
    with ThreadedServer(create_app(..., token), name="the STIP server") as running:
        client = Client(running.url, token)
    uvicorn.run(create_app(..., token), **uvicorn_options(host, port, ConnectionLimits()))
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from coinfer.sdk.errors import CoinferError, InputNotFoundError, InvalidArgumentError

__all__ = ["TOKEN_ENV", "ConnectionLimits", "IdleSlot", "ServiceError", "ThreadedServer", "bearer_matches",
           "client_token", "create_service_app", "evict_idle", "metrics_route", "read_limited_body",
           "refuse_with", "resolve_token", "uvicorn_options"]

#: The environment variable services and clients read the bearer token from.
TOKEN_ENV = "COINFER_TOKEN"

_Server = TypeVar("_Server", bound="ThreadedServer")


class IdleSlot(Protocol):
    """What a service holds for one client (a KV-cache session, a camera stream): the
    ``time.monotonic()`` of the request that last used it."""

    last_active: float


_Slot = TypeVar("_Slot", bound=IdleSlot)


def evict_idle(slots: MutableMapping[str, _Slot], idle_seconds: float) -> None:
    """Free the slots no request used for more than ``idle_seconds``, so a client that went
    away without closing its session or stream does not hold a slot for good. Call it with
    the lock that guards ``slots`` held."""
    now = time.monotonic()
    for key in [key for key, slot in slots.items() if now - slot.last_active > idle_seconds]:
        del slots[key]


class ServiceError(CoinferError):
    """A request a service refuses; ``status`` is the HTTP status to answer with.

    Each service subclasses it (``GatewayError``, ``RequestError``) and answers its own
    subclass with ``{"detail": message}`` and that status.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _given_token(token_file: Path | None, env: str) -> str:
    """The token in ``token_file`` if given, else ``$env``; empty if neither holds one."""
    if token_file is None:
        return os.environ.get(env, "")
    if not token_file.is_file():
        raise InputNotFoundError(f"{token_file}: no such token file")
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CoinferError(f"{token_file}: unreadable token file: {error}") from error


def resolve_token(token_file: Path | None, env: str = TOKEN_ENV) -> str:
    """The token from ``token_file``, else ``$env``, else a fresh one announced on stderr."""
    token = _given_token(token_file, env)
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"no token given; clients must send: Authorization: Bearer {token}", file=sys.stderr)
    return token


def client_token(token_file: Path | None, env: str = TOKEN_ENV) -> str:
    """A client's token: from ``token_file``, else ``$env``; a client cannot make one up."""
    token = _given_token(token_file, env)
    if not token:
        raise CoinferError(f"no token: set {env} or give --token-file with the service's bearer token")
    return token


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token``, compared in constant time."""
    return hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


def refuse_with(app: Any, error: type[ServiceError], token: str) -> Callable[..., None]:
    """Make a FastAPI ``app`` answer ``error`` as ``{"detail": message}`` with its status, and
    return the dependency that refuses a request without ``Authorization: Bearer <token>`` (401).

    A client that hangs up (or is cut off, :class:`ConnectionLimits`) before its whole body
    arrived costs one line in the log, not a traceback: it is the client's doing, not a fault.

    Example::

        authorize = refuse_with(app, GatewayError, token)

        @app.post(PATH, dependencies=[Depends(authorize)])
        async def handle(request: Request) -> dict: ...
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.requests import ClientDisconnect

    async def refuse(_: Any, raised: ServiceError) -> Any:
        return JSONResponse({"detail": str(raised)}, status_code=raised.status)

    async def hung_up(request: Any, _: ClientDisconnect) -> Any:
        message = "the client hung up before sending the whole request"
        logging.getLogger("uvicorn.error").warning("%s %s: %s", request.method, request.url.path, message)
        return JSONResponse({"detail": message}, status_code=400)  # nobody is left to read it

    def authorize(request: Request) -> None:
        if not bearer_matches(request.headers.get("authorization", ""), token):
            raise error("missing or wrong bearer token", status=401)

    # FastAPI injects the request by its annotation, which must be the class itself: this
    # module's postponed annotations are strings it would look up in the wrong namespace.
    authorize.__annotations__ = {"request": Request, "return": None}
    app.add_exception_handler(error, refuse)
    app.add_exception_handler(ClientDisconnect, hung_up)
    return authorize


def create_service_app(title: str, error: type[ServiceError], token: str) -> tuple[Any, Callable[..., None]]:
    """A FastAPI app for a coinfer service, and its token dependency (see :func:`refuse_with`).

    FastAPI serves ``/openapi.json``, ``/docs`` and ``/redoc`` to anyone, and no dependency of
    the app's routes reaches them: they would describe every endpoint of a service that is
    otherwise closed to clients without the token. Here they answer only with the token (401
    without), like every route.

    Example::

        app, authorize = create_service_app("coinfer edge gateway", GatewayError, token)
        app.router.dependencies.append(Depends(authorize))   # or per route
    """
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import JSONResponse

    app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)
    authorize = refuse_with(app, error, token)

    def guarded(page: Callable[[], Any]) -> Callable[[Any], Awaitable[Any]]:
        async def endpoint(request: Any) -> Any:
            authorize(request)
            return page()

        return endpoint

    app.add_route("/openapi.json", guarded(lambda: JSONResponse(app.openapi())), include_in_schema=False)
    app.add_route("/docs", guarded(lambda: get_swagger_ui_html(openapi_url="/openapi.json", title=title)),
                  include_in_schema=False)
    app.add_route("/redoc", guarded(lambda: get_redoc_html(openapi_url="/openapi.json", title=title)),
                  include_in_schema=False)
    return app, authorize


def metrics_route(app: Any, authorize: Callable[..., None], registry: Any, path: str = "/metrics") -> None:
    """Serve a prometheus-client ``registry`` at ``path`` in Prometheus' text format, behind the
    token like every other route (Prometheus sends it with ``authorization: {credentials_file:
    TOKEN_FILE}`` in its scrape config). Metric names of coinfer services start with ``coinfer_``.

    Example::

        registry = prometheus_client.CollectorRegistry()
        decoded = prometheus_client.Counter("coinfer_gate_packets_decoded", "...", registry=registry)
        metrics_route(app, authorize, registry)
    """
    from fastapi import Depends
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def scrape() -> Any:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(path, scrape, methods=["GET"], dependencies=[Depends(authorize)],
                      include_in_schema=False)


async def read_limited_body(request: Any, limit: int, error: type[ServiceError] = ServiceError) -> bytes:
    """The body of a Starlette/FastAPI ``request``, refused past ``limit`` bytes before it is all read.

    A declared ``Content-Length`` over the limit is refused at once; otherwise the body is
    read chunk by chunk and refused as soon as it grows past the limit. The refusal is
    ``error(message, status=413)``: pass the service's own :class:`ServiceError` subclass.
    """
    declared = request.headers.get("content-length")
    message = f"request body over the {limit}-byte limit"
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise error(message, status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise error(message, status=413)
    return bytes(body)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a service waits for a client that sends slowly or not at all, and how much
    request header it reads.

    uvicorn alone times out only a keep-alive connection after an answer: a connection that
    sends nothing, half a header or half a body is held open for good, and (with httptools)
    a header of any length is read. Times are whole seconds.

    ``idle_seconds``: the longest silence while the service waits on the client (before its
    first request, between keep-alive requests, inside a header or a body).
    ``header_seconds``: a request line and headers must arrive whole within this from their
    first byte, however steadily they trickle in (nginx's ``client_header_timeout``).
    ``min_body_rate``: bytes per second a body must average beyond a grace of ``idle_seconds``
    (Apache's ``RequestReadTimeout`` MinRate), so that a body trickled in a byte at a time ends.
    ``max_header_bytes``: a longer request line and headers are refused (400).
    """

    idle_seconds: int = 15
    header_seconds: int = 10
    min_body_rate: int = 1024
    max_header_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in ("idle_seconds", "header_seconds", "min_body_rate", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")


class _ConnectionGuard(asyncio.Protocol):
    """Enforces :class:`ConnectionLimits` on one connection; :func:`uvicorn_options` mixes it
    into uvicorn's HTTP protocol class (httptools or h11), whose state it reads after each read.

    The connection is in one phase at a time: ``idle`` (open, nothing sent yet), ``header``
    (a request is arriving, its headers not whole), ``body`` (its body, or the rest of one
    the app answered early, is arriving) or ``app`` (the request is whole: the app's time,
    no limit here; uvicorn's keep-alive timeout takes over after the answer).
    """

    limits: ConnectionLimits
    # uvicorn's protocol state, set by the class this is mixed into.
    cycle: Any
    scope: Any
    flow: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    send_400_response: Callable[[str], None]

    _phase = "idle"
    _timer: asyncio.TimerHandle | None = None
    _since = _last = 0.0
    _received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._enter("idle")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel()
            return
        cycle = self.cycle
        if cycle is None or self.scope is not cycle.scope:  # httptools starts a new scope per request
            phase = "header"
        elif cycle.more_body:
            phase = "body"
        else:
            phase = "header" if cycle.response_complete else "app"
        if phase != self._phase:
            self._enter(phase)
        self._last = self.loop.time()
        self._received += len(data)
        if phase == "header" and self._received > self.limits.max_header_bytes:
            self._cancel()
            self.send_400_response(f"request headers over the {self.limits.max_header_bytes}-byte limit")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _enter(self, phase: str) -> None:
        self._cancel()
        self._phase, self._since, self._last, self._received = phase, self.loop.time(), self.loop.time(), 0
        if phase != "app":
            self._timer = self.loop.call_at(self._deadline(), self._expire)

    def _deadline(self) -> float:
        limits = self.limits
        silence = self._last + limits.idle_seconds
        if self._phase == "header":
            return min(silence, self._since + limits.header_seconds)
        if self._phase == "body":
            return min(silence, self._since + limits.idle_seconds + self._received / limits.min_body_rate)
        return silence

    def _expire(self) -> None:
        """Close the connection past its deadline; reads only move the deadline, so the timer
        is set again for what is left."""
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == "body" and self.flow.read_paused:  # the app holds the body back, not the client
            self._since, self._last, self._received = now, now, 0
        if self._deadline() > now:
            self._timer = self.loop.call_at(self._deadline(), self._expire)
        else:
            self.transport.close()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def uvicorn_options(host: str = "127.0.0.1", port: int = 0, limits: ConnectionLimits | None = None, *,
                    log_level: str = "info") -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` (or ``uvicorn.Config``) for a coinfer service:
    where it listens and the :class:`ConnectionLimits` its connections keep.

    ``port`` is checked here because uvicorn does not: on uvloop, port 99999 binds port
    34463 (the number modulo 65536) and logs 99999.

    Example::

        uvicorn.run(app, **uvicorn_options("127.0.0.1", 8100, ConnectionLimits(idle_seconds=30)))
    """
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be in [0, 65535], got {port}")
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    limits = limits or ConnectionLimits()
    protocol = type("GuardedHTTPProtocol", (_ConnectionGuard, AutoHTTPProtocol), {"limits": limits})
    return {"host": host, "port": port, "log_level": log_level, "http": protocol,
            "timeout_keep_alive": limits.idle_seconds}


class ThreadedServer:
    """An ASGI app served by uvicorn on a daemon thread (port 0 picks a free one).

    For samples, notebooks, apps and tests; a production service runs uvicorn in the
    foreground. ``name`` says what failed to start in the error message; ``limits`` bound
    slow and silent connections as in the foreground (:func:`uvicorn_options`).

    Example::

        with ThreadedServer(app, name="the edge gateway") as running:
            urllib.request.urlopen(running.url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
                 name: str = "the server", limits: ConnectionLimits | None = None) -> None:
        import socket

        import uvicorn

        options = uvicorn_options(host, port, limits, log_level="warning")
        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                options["port"] = port = probe.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.app = app
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + start_timeout
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise CoinferError(f"{name} did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self: _Server) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
