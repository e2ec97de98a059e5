"""The MLink aggregation service: federated averaging of link graphs trained on edge servers.

Each edge server trains the global links on its own cameras' model outputs and uploads
the weight change; when ``min_clients`` updates for the current round have arrived the
service applies their sample-weighted mean (:func:`coinfer.sdk.mlink.fedavg.apply_mean_delta`),
saves the new global graph and opens the next round. Model outputs never leave the edge.

Endpoints (all need ``Authorization: Bearer <token>``, else 401):

- ``GET  /v1/mlink/graph``: ``{"description", "graph", "round", "min_clients"}``; a client
  rebuilds the untrained graph with ``LinkGraph.from_description``;
- ``GET  /v1/mlink/global``: the global weights as an ``mlink-global`` wire frame
  (``application/octet-stream``, the round in its header);
- ``POST /v1/mlink/updates``: an ``mlink-update`` frame for the current round; answers
  ``{"accepted": true, "round", "staged", "closed"}``. 400: malformed frame, names, shapes,
  dtype, NaN/inf, other graph; 409: stale or future round, or this client already sent its
  update for this round (an update is final: a client waits for the next round); 413: body
  over the limit (refused from ``Content-Length`` before it is read);
- ``GET  /v1/mlink/status``: round, staged clients, ``min_clients``, byte and update counters.

An update is decoded and checked in full before it touches any state, the round closes
under one lock, and the new weights are new arrays swapped in only once they are saved,
so a refused, truncated or abandoned upload changes neither the global links nor the
staged updates. With a ``state_dir``, closing round r writes the artifact
``state_dir/round-<r+1>`` atomically (the round number is in the name, so weights and
round always agree), removes the older ones, and a restarted service resumes from it.

Example::

    coinfer mlink serve --links out/links --min-clients 3 --state-dir out/fed   # COINFER_TOKEN

    # or in process, with two edge clients (``outputs_*``: aligned {model: outputs} per edge):
    from coinfer.cloud.mlink.server import LinkAggregator, create_app
    from coinfer.edge.mlink.federated_client import FederatedClient
    from coinfer.sdk.mlink import LinkGraph
    from coinfer.sdk.service import ThreadedServer

    aggregator = LinkAggregator(LinkGraph.load("out/links"), min_clients=2, state_dir="out/fed")
    with ThreadedServer(create_app(aggregator, "secret"), name="the MLink aggregator") as running:
        for name, outputs in [("edge-1", outputs_1), ("edge-2", outputs_2)]:
            client = FederatedClient(running.url, "secret", name)
            client.train_round(client.fetch_graph(), outputs, epochs=3)
        assert aggregator.round == 1          # out/fed/round-000001 holds the averaged links
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink import LinkGraph
from coinfer.sdk.mlink.fedavg import (
    CONTENT_TYPE,
    GLOBAL_PATH,
    GRAPH_PATH,
    STATUS_PATH,
    UPDATES_PATH,
    FederatedError,
    Update,
    apply_mean_delta,
    check_applicable,
    decode_update,
    encode_global,
    frame_limits,
    graph_id,
    max_frame_bytes,
    weight_shapes,
)
from coinfer.sdk.service import ServiceError, read_limited_body, refuse_with

__all__ = ["AggregationError", "LinkAggregator", "ServiceOptions", "create_app", "latest_saved"]

ROUND_DIR = re.compile(r"^round-(\d{6,})$")
#: Bounds on ``min_clients``: staged updates are held in memory until the round closes.
MAX_MIN_CLIENTS = 1000


class AggregationError(ServiceError):
    """A request the aggregation service refuses; ``status`` is the HTTP status."""


@dataclass(frozen=True)
class ServiceOptions:
    """An operator's cap on request bodies. The update body limit is one frame of the graph
    (:func:`~coinfer.sdk.mlink.fedavg.max_frame_bytes`); a graph whose frame exceeds this cap
    is refused at start-up rather than served with updates it could never accept."""

    max_request_bytes: int = 64 << 20


def latest_saved(state_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """(round, path) of the newest ``round-NNNNNN`` artifact in ``state_dir``, or None."""
    root = Path(state_dir)
    if not root.is_dir():
        return None
    found = [(int(match.group(1)), entry) for entry in root.iterdir()
             if entry.is_dir() and (match := ROUND_DIR.match(entry.name))]
    return max(found) if found else None


def _read_only(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Own, read-only copies: the served global can never change behind a reader's back."""
    out = {}
    for name, value in weights.items():
        array = np.array(value, dtype=np.float32, copy=True)
        array.setflags(write=False)
        out[name] = array
    return out


class LinkAggregator:
    """The global link weights, the current round's staged updates, and their persistence.

    ``graph`` gives the architecture and the initial weights (round 0). With ``state_dir``
    holding a saved round of the same graph, the aggregator resumes from it; a saved round of
    a different graph is refused rather than mixed in. ``weight_by_samples`` False averages
    the updates uniformly instead of by their clients' sample counts.
    """

    def __init__(self, graph: LinkGraph, min_clients: int, state_dir: str | os.PathLike | None = None, *,
                 weight_by_samples: bool = True) -> None:
        if type(min_clients) is not int or not 1 <= min_clients <= MAX_MIN_CLIENTS:
            raise CoinferError(f"min_clients must be an integer in [1, {MAX_MIN_CLIENTS}], "
                               f"got {min_clients!r}")
        self.min_clients = min_clients
        self.weight_by_samples = weight_by_samples
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.description = graph.describe()
        self.graph_id = graph_id(self.description)
        self._graph = graph
        weights = graph.weights()
        self.shapes = weight_shapes(weights)
        self.limits = frame_limits(self.shapes)
        self.max_update_bytes = max_frame_bytes(self.shapes)
        round_ = 0
        self.artifact_path: Path | None = None
        saved = latest_saved(self.state_dir) if self.state_dir is not None else None
        if saved is not None:
            round_, self.artifact_path = saved
            loaded = LinkGraph.load(self.artifact_path)
            if graph_id(loaded.describe()) != self.graph_id:
                raise CoinferError(f"{self.artifact_path}: saved global links are of a different graph than "
                                   "the one given; use another --state-dir or remove it")
            weights = loaded.weights()
        self._lock = threading.Lock()
        self._round = round_
        self._weights = _read_only(weights)
        self._frame = encode_global(self._weights, round=round_, graph=self.graph_id, limits=self.limits)
        self._staged: dict[str, Update] = {}
        self.counters = dict.fromkeys(("bytes_received", "bytes_sent", "updates_accepted", "updates_refused",
                                       "aborted_uploads"), 0)

    @property
    def round(self) -> int:
        return self._round

    def global_weights(self) -> tuple[int, dict[str, np.ndarray]]:
        """(round, read-only weights) of the current global graph."""
        with self._lock:
            return self._round, dict(self._weights)

    def global_frame(self) -> bytes:
        """The current global model as an ``mlink-global`` frame (encoded once per round)."""
        with self._lock:
            self.counters["bytes_sent"] += len(self._frame)
            return self._frame

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"round": self._round, "graph": self.graph_id, "min_clients": self.min_clients,
                    "staged": sorted(self._staged), **self.counters}

    def graph_info(self) -> dict[str, Any]:
        with self._lock:
            return {"description": self.description, "graph": self.graph_id, "round": self._round,
                    "min_clients": self.min_clients}

    def note_aborted(self) -> None:
        """Count an upload whose client hung up before sending its whole body."""
        with self._lock:
            self.counters["aborted_uploads"] += 1

    def submit(self, body: bytes) -> dict[str, Any]:
        """Decode, check and stage one update; close the round when ``min_clients`` are staged."""
        with self._lock:
            self.counters["bytes_received"] += len(body)
        try:
            update = decode_update(body, self.shapes, self.graph_id, self.limits)
        except (wire.WireError, FederatedError) as error:
            self._refused()
            raise AggregationError(f"malformed update: {error}") from error
        with self._lock:
            if update.round != self._round:
                self.counters["updates_refused"] += 1
                when = "stale" if update.round < self._round else "from the future"
                raise AggregationError(f"update from {update.client!r} is for round {update.round} ({when}); "
                                       f"the current round is {self._round}: fetch the global links again",
                                       status=409)
            if update.client in self._staged:
                self.counters["updates_refused"] += 1
                raise AggregationError(f"client {update.client!r} already sent its update for round "
                                       f"{self._round}; wait for round {self._round + 1}", status=409)
            try:
                check_applicable(self._weights, update.delta, repr(update.client))
            except FederatedError as error:
                self.counters["updates_refused"] += 1
                raise AggregationError(f"malformed update: {error}") from error
            self._staged[update.client] = update
            staged = len(self._staged)
            closed = staged >= self.min_clients
            if closed:
                try:
                    self._close_round()
                except Exception as error:
                    del self._staged[update.client]
                    self.counters["updates_refused"] += 1
                    raise AggregationError(f"round {self._round} could not close, update not staged: {error}",
                                           status=500) from error
            self.counters["updates_accepted"] += 1
            return {"accepted": True, "round": update.round, "staged": staged, "closed": closed}

    def _refused(self) -> None:
        with self._lock:
            self.counters["updates_refused"] += 1

    def _close_round(self) -> None:
        """Θ + mean Δ into new arrays, saved, then swapped in; the caller holds the lock."""
        updates = list(self._staged.values())
        samples = [update.samples for update in updates] if self.weight_by_samples else None
        new = _read_only(apply_mean_delta(self._weights, [update.delta for update in updates], samples,
                                          clients=[repr(update.client) for update in updates]))
        next_round = self._round + 1
        frame = encode_global(new, round=next_round, graph=self.graph_id, limits=self.limits)
        if self.state_dir is not None:
            self._save(self.state_dir, new, next_round)
        self._weights, self._round, self._frame, self._staged = new, next_round, frame, {}

    def _save(self, state_dir: Path, weights: dict[str, np.ndarray], round_: int) -> None:
        """Write ``state_dir/round-<round_>`` atomically, then drop the older rounds."""
        self._graph.set_weights(weights)
        path = state_dir / f"round-{round_:06d}"
        self._graph.save(path, overwrite=True)
        for entry in state_dir.iterdir():
            match = ROUND_DIR.match(entry.name)
            if entry.is_dir() and match and int(match.group(1)) < round_:
                shutil.rmtree(entry, ignore_errors=True)
        self.artifact_path = path


def create_app(aggregator: LinkAggregator, token: str, options: ServiceOptions = ServiceOptions()) -> FastAPI:
    """The FastAPI application serving ``aggregator``; every route checks the bearer token."""
    if not token:
        raise CoinferError("the MLink aggregation service needs a non-empty token")
    if options.max_request_bytes < aggregator.max_update_bytes:
        raise CoinferError(f"a request limit of {options.max_request_bytes} bytes is below one update of "
                           f"this graph ({aggregator.max_update_bytes} bytes); raise --max-request-mib")
    app = FastAPI(title="coinfer MLink aggregation service")
    app.router.dependencies.append(Depends(refuse_with(app, AggregationError, token)))
    limit = aggregator.max_update_bytes

    @app.get(GRAPH_PATH)
    def graph() -> dict[str, Any]:
        return aggregator.graph_info()

    @app.get(GLOBAL_PATH)
    def global_weights() -> Response:
        return Response(aggregator.global_frame(), media_type=CONTENT_TYPE)

    @app.post(UPDATES_PATH)
    async def updates(request: Request) -> dict[str, Any]:
        try:
            body = await read_limited_body(request, limit, AggregationError)
        except ClientDisconnect:
            aggregator.note_aborted()
            raise AggregationError("the client hung up before sending the whole update") from None
        return await run_in_threadpool(aggregator.submit, body)

    @app.get(STATUS_PATH)
    def status() -> dict[str, Any]:
        return aggregator.status()

    return app
