"""What every coinfer HTTP service shares, whichever tier runs it: its token, its body limit, its thread.

The services themselves (the edge gateway, the STIP model server) live in their tiers and
build their FastAPI apps there; this module holds the plumbing they would otherwise each
write again. It imports only the standard library; uvicorn is imported inside
:class:`ThreadedServer` when a server starts, FastAPI inside :func:`refuse_with`.

Example::

    token = resolve_token(args.token_file)          # --token-file, else COINFER_TOKEN, else fresh
    with ThreadedServer(create_app(..., token), name="the STIP server") as running:
        client = Client(running.url, token)
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from coinfer.sdk.errors import CoinferError, InputNotFoundError

__all__ = ["TOKEN_ENV", "IdleSlot", "ServiceError", "ThreadedServer", "bearer_matches", "client_token",
           "evict_idle", "read_limited_body", "refuse_with", "resolve_token"]

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

    Example::

        authorize = refuse_with(app, GatewayError, token)

        @app.post(PATH, dependencies=[Depends(authorize)])
        async def handle(request: Request) -> dict: ...
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def refuse(_: Any, raised: ServiceError) -> Any:
        return JSONResponse({"detail": str(raised)}, status_code=raised.status)

    def authorize(request: Request) -> None:
        if not bearer_matches(request.headers.get("authorization", ""), token):
            raise error("missing or wrong bearer token", status=401)

    # FastAPI injects the request by its annotation, which must be the class itself: this
    # module's postponed annotations are strings it would look up in the wrong namespace.
    authorize.__annotations__ = {"request": Request, "return": None}
    app.add_exception_handler(error, refuse)
    return authorize


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


class ThreadedServer:
    """An ASGI app served by uvicorn on a daemon thread (port 0 picks a free one).

    For samples, notebooks, apps and tests; a production service runs uvicorn in the
    foreground. ``name`` says what failed to start in the error message.

    Example::

        with ThreadedServer(app, name="the edge gateway") as running:
            urllib.request.urlopen(running.url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
                 name: str = "the server") -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.app = app
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
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
