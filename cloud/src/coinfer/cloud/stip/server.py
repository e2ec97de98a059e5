"""The STIP model server: runs the transformed model on permuted embeddings, nothing else.

It never holds the input embedding, the tokenizer or any key, so what it receives and
returns is permuted. Endpoints (all need ``Authorization: Bearer <token>``):

- ``GET  /v1/info``: hidden size, output kind and size, position limit;
- ``POST /v1/forward``: a wire frame with ``inputs_embeds`` (B, T, hidden) float32 and an
  optional ``attention_mask`` (B, T); returns ``output`` (permuted logits or hidden states),
  refused (413) before the model runs when B x T x output size floats exceed the response limit;
- ``POST /v1/sessions``: open a generation session; the server keeps its KV cache;
- ``POST /v1/sessions/{id}/step``: append permuted embedding rows (1, t, hidden); returns
  the permuted logits of the last position, so each decoding step sends one row;
- ``DELETE /v1/sessions/{id}``.

Example::

    coinfer stip serve --bundle out/server --port 8000   # token from COINFER_TOKEN
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError, InvalidArgumentError
from coinfer.sdk.service import (
    ServiceError,
    ThreadedServer,
    create_service_app,
    evict_idle,
    read_limited_body,
)
from coinfer.sdk.stip import protocol
from coinfer.sdk.stip.transform import cloud_forward


class RequestError(ServiceError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""


@dataclass(frozen=True)
class ServerOptions:
    """Bounds on what one client can make the server hold or compute.

    ``max_response_bytes`` bounds the output of one forward (batch x tokens x output size
    float32), checked before the model runs: a request well inside ``max_request_bytes`` can
    ask for gigabytes of logits over a large vocabulary. It cannot exceed what a client reads
    (:data:`~coinfer.sdk.stip.protocol.RESPONSE_LIMITS`, 1 GiB), which is its default.
    """

    max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES
    max_response_bytes: int = protocol.RESPONSE_LIMITS.max_payload_bytes
    max_batch: int = 64
    max_sessions: int = 64
    session_idle_seconds: float = 600.0
    #: Plain-baseline mode for benchmarks: the server holds a full model and takes token ids
    #: in clear. Never enable it for a STIP deployment.
    accept_token_ids: bool = False

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_response_bytes", "max_batch", "max_sessions",
                     "session_idle_seconds"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_response_bytes > protocol.RESPONSE_LIMITS.max_payload_bytes:
            raise InvalidArgumentError(f"max_response_bytes must be at most the "
                                       f"{protocol.RESPONSE_LIMITS.max_payload_bytes} bytes a client reads, "
                                       f"got {self.max_response_bytes}")

    @property
    def limits(self) -> wire.WireLimits:
        """The wire limits of a request frame: the protocol's, with a payload of up to
        ``max_request_bytes`` (the protocol's default is only the default request limit)."""
        return protocol.request_limits(self.max_request_bytes)


@dataclass
class _Session:
    cache: Any = None
    tokens: int = 0
    last_active: float = field(default_factory=time.monotonic)


class StipModelServer:
    """The transformed model behind a lock, plus KV-cache sessions."""

    def __init__(self, model: Any, info: dict[str, Any], options: ServerOptions = ServerOptions()) -> None:
        self.model = model
        self.info = info
        self.options = options
        self._model_lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()

    @property
    def open_sessions(self) -> int:
        """How many generation sessions hold a KV cache now (idle ones not yet evicted included)."""
        with self._sessions_lock:
            return len(self._sessions)

    def forward(self, embeds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        import torch

        self._check_embeddings(embeds, max_batch=self.options.max_batch)
        batch, tokens = embeds.shape[:2]
        width = int(self.info["output_size"])
        size = batch * tokens * width * np.dtype(np.float32).itemsize
        if size > self.options.max_response_bytes:
            raise RequestError(f"{batch} x {tokens} positions x {width} outputs are {size} bytes of float32, "
                               f"over the {self.options.max_response_bytes}-byte response limit; send fewer "
                               f"rows or tokens per request", status=413)
        if mask is not None and (mask.shape != embeds.shape[:2] or mask.dtype.kind not in "iub"):
            raise RequestError(f"{protocol.MASK} must be an integer array of shape {embeds.shape[:2]}, "
                               f"got {mask.dtype}{list(mask.shape)}")
        mask_tensor = None if mask is None else torch.from_numpy(mask.astype(np.int64))
        with self._model_lock, torch.no_grad():
            outputs = cloud_forward(self.model, torch.from_numpy(np.array(embeds, dtype=np.float32)),
                                    mask_tensor)
        return _primary(outputs)

    def open_session(self) -> str:
        with self._sessions_lock:
            evict_idle(self._sessions, self.options.session_idle_seconds)
            if len(self._sessions) >= self.options.max_sessions:
                raise RequestError(f"all {self.options.max_sessions} sessions are in use", status=429)
            session_id = secrets.token_urlsafe(16)
            self._sessions[session_id] = _Session()
        return session_id

    def step(self, session_id: str, embeds: np.ndarray | None,
             token_ids: np.ndarray | None = None) -> np.ndarray:
        import torch

        if token_ids is not None:
            if not self.options.accept_token_ids:
                raise RequestError("this server takes permuted embeddings only, not token ids")
            vocab = self.model.get_input_embeddings().num_embeddings
            well_formed = (token_ids.ndim == 2 and token_ids.shape[0] == 1 and token_ids.shape[1] >= 1
                           and token_ids.dtype.kind in "iu")
            if not well_formed or not 0 <= token_ids.min() <= token_ids.max() < vocab:
                raise RequestError(f"{protocol.TOKEN_IDS} must be (1, tokens) integers below {vocab}")
            inputs = {"input_ids": torch.from_numpy(token_ids.astype(np.int64))}
            count = token_ids.shape[1]
        elif embeds is None:
            raise RequestError(f"frame has no '{protocol.INPUTS}' array")
        else:
            self._check_embeddings(embeds, max_batch=1)
            inputs = {"inputs_embeds": torch.from_numpy(np.array(embeds, dtype=np.float32))}
            count = embeds.shape[1]
        with self._sessions_lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise RequestError(f"no session {session_id!r} (closed or expired)", status=404)
        limit = int(self.info.get("max_positions") or 0)
        # The model lock orders every step: checking the positions, running the model and
        # growing the cache happen under it at once, or two concurrent steps of one session
        # would both pass the check and the second would run past the model's positions.
        with self._model_lock, torch.no_grad():
            if limit and session.tokens + count > limit:
                raise RequestError(f"session would exceed the model's {limit} positions")
            outputs = self.model(**inputs, cache=session.cache, use_cache=True)
            session.cache = outputs.cache
            session.tokens += count
            session.last_active = time.monotonic()
        return _primary(outputs)[:, -1, :]

    def close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            if self._sessions.pop(session_id, None) is None:
                raise RequestError(f"no session {session_id!r}", status=404)

    def _check_embeddings(self, embeds: np.ndarray, max_batch: int) -> None:
        hidden = int(self.info["hidden_size"])
        if embeds.ndim != 3 or embeds.shape[2] != hidden:
            raise RequestError(f"{protocol.INPUTS} must have shape (batch, tokens, {hidden}), "
                               f"got {list(embeds.shape)}")
        if embeds.dtype != np.float32:
            raise RequestError(f"{protocol.INPUTS} must be float32, got {embeds.dtype}")
        if not 1 <= embeds.shape[0] <= max_batch or embeds.shape[1] < 1:
            raise RequestError(f"batch must be 1..{max_batch} and tokens >= 1, got {list(embeds.shape[:2])}")
        limit = int(self.info.get("max_positions") or 0)
        if limit and embeds.shape[1] > limit:
            raise RequestError(f"{embeds.shape[1]} tokens exceed the model's {limit} positions")
        if not np.isfinite(embeds).all():
            raise RequestError(f"{protocol.INPUTS} contains NaN or infinity")


def _primary(outputs: Any) -> np.ndarray:
    logits = getattr(outputs, "logits", None)
    tensor = logits if logits is not None else outputs.last_hidden_state
    return tensor.detach().cpu().numpy().astype(np.float32)


def create_app(server: StipModelServer, token: str) -> FastAPI:
    """The FastAPI application serving ``server``; every route checks the bearer token."""
    if not token:
        raise CoinferError("the STIP server needs a non-empty token")
    app, authorize = create_service_app("coinfer STIP model server", RequestError, token)
    add_routes(app, server, authorize)
    return app


def add_routes(app: FastAPI, server: StipModelServer, authorize: Callable[..., None]) -> None:
    """Add the STIP endpoints serving ``server`` to ``app``, each behind the token dependency
    ``authorize`` (:func:`~coinfer.sdk.service.create_service_app`); ``app`` must answer
    :class:`RequestError` (it does when it answers :class:`~coinfer.sdk.service.ServiceError`).
    ``coinfer cloud serve`` hosts them next to other services in one application."""
    router = APIRouter(dependencies=[Depends(authorize)])

    async def read_frame(request: Request) -> wire.Message:
        body = await read_limited_body(request, server.options.max_request_bytes, RequestError)
        try:
            message = wire.decode(body, server.options.limits)
        except wire.WireError as error:
            raise RequestError(f"malformed frame: {error}") from error
        if protocol.INPUTS not in message.arrays and protocol.TOKEN_IDS not in message.arrays:
            raise RequestError(f"frame has no '{protocol.INPUTS}' array")
        return message

    def frame_response(output: np.ndarray) -> Response:
        payload = wire.encode(wire.Message(wire.MessageType.RESPONSE, {}, {protocol.OUTPUT: output}),
                              protocol.RESPONSE_LIMITS)
        return Response(payload, media_type=protocol.CONTENT_TYPE)

    @router.get(protocol.INFO_PATH)
    def info() -> dict[str, Any]:
        return server.info

    @router.post(protocol.FORWARD_PATH)
    async def forward(request: Request) -> Response:
        message = await read_frame(request)
        if protocol.INPUTS not in message.arrays:
            raise RequestError(f"frame has no '{protocol.INPUTS}' array")
        output = await run_in_threadpool(server.forward, message.arrays[protocol.INPUTS],
                                         message.arrays.get(protocol.MASK))
        return frame_response(output)

    @router.post(protocol.SESSIONS_PATH)
    def open_session() -> dict[str, str]:
        return {"session": server.open_session()}

    @router.post(protocol.SESSIONS_PATH + "/{session_id}/step")
    async def step(session_id: str, request: Request) -> Response:
        message = await read_frame(request)
        output = await run_in_threadpool(server.step, session_id, message.arrays.get(protocol.INPUTS),
                                         message.arrays.get(protocol.TOKEN_IDS))
        return frame_response(output)

    @router.delete(protocol.SESSIONS_PATH + "/{session_id}")
    def close_session(session_id: str) -> dict[str, str]:
        server.close_session(session_id)
        return {"closed": session_id}

    app.include_router(router)


class BackgroundServer(ThreadedServer):
    """A STIP server on a uvicorn thread (port 0 picks a free one); for notebooks, apps and tests.

    Example::

        with BackgroundServer(StipModelServer(model, info), token) as running:
            client = STIPClient(..., running.url, token, ...)
    """

    def __init__(self, server: StipModelServer, token: str, host: str = "127.0.0.1", port: int = 0,
                 start_timeout: float = 30.0) -> None:
        super().__init__(create_app(server, token), host, port, start_timeout, name="the STIP server")
