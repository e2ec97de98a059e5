"""The MLink aggregation service: federated averaging of link graphs trained on edge servers.

Each edge server trains the global links on its own cameras' model outputs and uploads
the weight change; when ``min_clients`` updates for the current round have arrived the
service combines them robustly (:mod:`coinfer.sdk.mlink.robust`: sample counts capped,
each delta's norm clipped to a multiple of the round's median, then by default the
coordinate-wise median), checks the result did not diverge, saves the new global graph and
opens the next round. Model outputs never leave the edge.

Who may send updates is fixed at start (:class:`ClientRegistry`, ``--clients FILE``):
every client is listed by name, either with the sha256 digest of its own token (an update
is accepted only under the name its token belongs to) or without one, which lets it speak
with the service token (then every holder of that token can speak for every such name,
but still only for listed names, one update per name and round). Made-up names are
refused, so one credential cannot fill a round with invented clients.

Endpoints (all need ``Authorization: Bearer <token>``, a client's own or the service
token, else 401):

- ``GET  /v1/mlink/graph``: ``{"description", "graph", "round", "min_clients"}``; a client
  rebuilds the untrained graph with ``LinkGraph.from_description``;
- ``GET  /v1/mlink/global``: the global weights as an ``mlink-global`` wire frame
  (``application/octet-stream``, the round in its header);
- ``POST /v1/mlink/updates``: an ``mlink-update`` frame for the current round; answers
  ``{"accepted": true, "round", "staged", "closed", "rejected"}`` (``rejected``: why the
  round this update closed was discarded, else null). 400: malformed frame, names, shapes,
  dtype, NaN/inf, other graph; 403: a client name that is not registered or that the
  token does not speak for; 409: stale or future round, or this client already sent its
  update for this round (an update is final: a client waits for the next round); 413:
  body over the limit (refused from ``Content-Length`` before it is read); 503: the closed
  round could not be saved (the update is not staged; send it again);
- ``GET  /v1/mlink/status``: round, staged clients, ``min_clients``, registered clients,
  the aggregation rules, byte, update, clipping and rejection counters, the last rejected
  rounds.

An update is decoded and checked in full before it touches any state, the round closes
under one lock, and the new weights are new arrays swapped in only once they are saved,
so a refused, truncated or abandoned upload changes neither the global links nor the
staged updates. A round whose result is not finite or whose weight norm jumps past
``max_growth`` × the previous one is discarded: nothing is saved, the global links stay,
the round number still advances (so waiting clients go on, training again from the kept
links), and the event is logged in one line and listed in the status. With a
``state_dir``, closing round r writes the artifact ``state_dir/round-<r+1>`` atomically
(the round number is in the name, so weights and round always agree), removes the older
ones, and a restarted service resumes from it.

Example::

    coinfer mlink serve --links out/links --min-clients 3 --clients clients.txt --state-dir out/fed

    # or in process, with two edge clients (``outputs_*``: aligned {model: outputs} per edge):
    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, create_app
    from coinfer.edge.mlink.federated_client import FederatedClient
    from coinfer.sdk.mlink import LinkGraph
    from coinfer.sdk.service import ThreadedServer

    tokens = {"edge-1": "edge-1-secret", "edge-2": "edge-2-secret"}
    aggregator = LinkAggregator(LinkGraph.load("out/links"), min_clients=2, state_dir="out/fed",
                                clients=ClientRegistry.with_tokens(tokens))
    with ThreadedServer(create_app(aggregator, "service-secret"), name="the MLink aggregator") as running:
        for name, outputs in [("edge-1", outputs_1), ("edge-2", outputs_2)]:
            client = FederatedClient(running.url, tokens[name], name)
            client.train_round(client.fetch_graph(), outputs, epochs=3)
        assert aggregator.round == 1          # out/fed/round-000001 holds the combined links
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from coinfer.sdk import wire
from coinfer.sdk.errors import CoinferError, InputNotFoundError
from coinfer.sdk.mlink import LinkGraph
from coinfer.sdk.mlink.fedavg import (
    CONTENT_TYPE,
    GLOBAL_PATH,
    GRAPH_PATH,
    STATUS_PATH,
    UPDATES_PATH,
    FederatedError,
    Update,
    check_applicable,
    check_client_name,
    decode_update,
    encode_global,
    frame_limits,
    graph_id,
    max_frame_bytes,
    weight_shapes,
)
from coinfer.sdk.mlink.robust import DivergenceError, RobustOptions, aggregate, check_divergence
from coinfer.sdk.service import ServiceError, bearer_matches, create_service_app, read_limited_body

__all__ = ["AggregationError", "ClientRegistry", "LinkAggregator", "ServiceOptions", "add_routes",
           "create_app", "latest_saved", "token_digest"]

ROUND_DIR = re.compile(r"^round-(\d{6,})$")
#: Bounds on ``min_clients``: staged updates are held in memory until the round closes.
MAX_MIN_CLIENTS = 1000
#: Bounds on the client list (entries, and bytes of its file) so loading it is bounded work.
MAX_CLIENTS = 10_000
MAX_CLIENT_LIST_BYTES = 1 << 20
#: How many rejected rounds the status lists (the counter counts them all).
REJECTIONS_SHOWN = 10
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

log = logging.getLogger(__name__)


class AggregationError(ServiceError):
    """A request the aggregation service refuses; ``status`` is the HTTP status."""


@dataclass(frozen=True)
class ServiceOptions:
    """An operator's cap on request bodies. The update body limit is one frame of the graph
    (:func:`~coinfer.sdk.mlink.fedavg.max_frame_bytes`); a graph whose frame exceeds this cap
    is refused at start-up rather than served with updates it could never accept."""

    max_request_bytes: int = 64 << 20


def token_digest(token: str) -> str:
    """``sha256:<hex>`` of a token: what a client list stores, so the file holds no usable secret.

    The same as ``printf %s "$TOKEN" | sha256sum``. Tokens are random (e.g.
    ``secrets.token_urlsafe(24)``), so an unsalted digest cannot be guessed back.

    >>> token_digest("s3cret")
    'sha256:...'
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


class ClientRegistry:
    """The clients an aggregator accepts updates from: ``{name: token digest, or None}``.

    A name with a digest speaks only with the token of that digest (:func:`token_digest`);
    a name with None speaks with the service token. Digests are distinct, so a client's own
    token names exactly one client. The file form (``--clients``) has one client a line,
    ``NAME`` or ``NAME sha256:HEX``, ``#`` starting a comment::

        # edge servers of the city deployment
        edge-lobby    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        edge-parking  sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
        edge-lab      # speaks with the service token
    """

    def __init__(self, digests: Mapping[str, str | None]) -> None:
        if not digests:
            raise CoinferError("the client list is empty: an aggregator needs at least one client")
        if len(digests) > MAX_CLIENTS:
            raise CoinferError(f"{len(digests)} clients listed, at most {MAX_CLIENTS}")
        owners: dict[str, str] = {}
        for name, digest in digests.items():
            _check_entry(name, digest, owners)
        self._digests = dict(digests)
        self._owners = owners
        self._shared = frozenset(name for name, digest in digests.items() if digest is None)

    @classmethod
    def shared(cls, names: Iterable[str]) -> ClientRegistry:
        """These names, all speaking with the service token (the simple one-token setup)."""
        return cls(dict.fromkeys(names))

    @classmethod
    def with_tokens(cls, tokens: Mapping[str, str]) -> ClientRegistry:
        """``{name: token}``, each client speaking only with its own token (kept as digests)."""
        return cls({name: token_digest(token) for name, token in tokens.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClientRegistry:
        """The client list in ``path`` (the format above); errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such client list")
        try:
            if path.stat().st_size > MAX_CLIENT_LIST_BYTES:
                raise CoinferError(f"{path}: a client list is at most {MAX_CLIENT_LIST_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CoinferError(f"{path}: unreadable client list: {error}") from error
        digests: dict[str, str | None] = {}
        owners: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                if len(fields) > 2:
                    raise CoinferError(f"expected 'NAME' or 'NAME sha256:HEX', got {line.strip()!r}")
                name, digest = fields[0], (fields[1].lower() if len(fields) == 2 else None)
                if name in digests:
                    raise CoinferError(f"client {name!r} is listed twice")
                _check_entry(name, digest, owners)
            except CoinferError as error:
                raise CoinferError(f"{path}:{number}: {error}") from None
            digests[name] = digest
        if not digests:
            raise CoinferError(f"{path} lists no clients")
        return cls(digests)

    @property
    def names(self) -> list[str]:
        return list(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, name: object) -> bool:
        return name in self._digests

    def owner_of(self, token: str) -> str | None:
        """The client whose own token this is, if any."""
        return self._owners.get(token_digest(token))

    def speaks_for(self, authorization: str, service_token: str) -> frozenset[str] | None:
        """The client names an ``Authorization`` header may send updates for, or None when it
        carries no known token (401). The service token speaks for the names without a digest
        (possibly none: then it only reads); a client's own token for that client alone."""
        if bearer_matches(authorization, service_token):
            return self._shared
        scheme, _, token = authorization.partition(" ")
        owner = self.owner_of(token) if scheme == "Bearer" and token else None
        return None if owner is None else frozenset({owner})


def _check_entry(name: str, digest: str | None, owners: dict[str, str]) -> None:
    """One client of a list: a valid name and, if it has its own token, a digest no other
    client has (recorded in ``owners``)."""
    try:
        check_client_name(name)
    except FederatedError as error:
        raise CoinferError(str(error)) from None
    if digest is None:
        return
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise CoinferError(f"client {name!r}: a token digest is 'sha256:<64 hex digits>', got {digest!r}")
    if digest in owners:
        raise CoinferError(f"client {name!r} has the same token as {owners[digest]!r}; give each client its "
                           "own token, or list both without one to share the service token")
    owners[digest] = name


def latest_saved(state_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """(round, path) of the newest ``round-NNNNNN`` artifact in ``state_dir``, or None."""
    root = Path(state_dir)
    if not root.is_dir():
        return None
    found = [(int(match.group(1)), entry) for entry in root.iterdir()
             if entry.is_dir() and (match := ROUND_DIR.match(entry.name))]
    return max(found) if found else None


def _check_state_dir(state_dir: Path) -> None:
    """Refuse, before serving, a state directory no round could ever be saved in: the path or
    a folder above it is a file (or a link to nowhere), or the place is not writable.
    Creates nothing: the folders are made when the first round is saved."""
    existing = next((path for path in (state_dir, *state_dir.parents) if os.path.lexists(path)), Path("."))
    if not existing.is_dir():
        raise CoinferError(f"cannot keep rounds in {state_dir}: {existing} is a file, not a directory; "
                           "give --state-dir a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CoinferError(f"cannot keep rounds in {state_dir}: {existing} is not writable")


def _read_only(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Own, read-only copies: the served global can never change behind a reader's back."""
    out = {}
    for name, value in weights.items():
        array = np.array(value, dtype=np.float32, copy=True)
        array.setflags(write=False)
        out[name] = array
    return out


class LinkAggregator:
    """The global link weights, the current round's staged updates, and their persistence.

    ``graph`` gives the architecture and the initial weights (round 0). ``clients`` lists who
    may send updates (``min_clients`` of them close a round, so it cannot exceed their
    number); ``rules`` how the updates are combined (robust by default, see
    :class:`~coinfer.sdk.mlink.robust.RobustOptions`). With ``state_dir`` holding a saved
    round of the same graph, the aggregator resumes from it; a saved round of a different
    graph, or one holding NaN or infinity, is refused rather than mixed in.
    ``weight_by_samples`` False gives every client the same weight in the ``mean``.
    """

    def __init__(self, graph: LinkGraph, min_clients: int, state_dir: str | os.PathLike | None = None, *,
                 clients: ClientRegistry, rules: RobustOptions | None = None,
                 weight_by_samples: bool = True) -> None:
        if type(min_clients) is not int or not 1 <= min_clients <= MAX_MIN_CLIENTS:
            raise CoinferError(f"min_clients must be an integer in [1, {MAX_MIN_CLIENTS}], "
                               f"got {min_clients!r}")
        if min_clients > len(clients):
            raise CoinferError(f"a round of {min_clients} updates (--min-clients) could never close: only "
                               f"{len(clients)} clients are registered")
        self.min_clients = min_clients
        self.clients = clients
        self.rules = rules if rules is not None else RobustOptions()
        self.weight_by_samples = weight_by_samples
        self.state_dir = None if state_dir is None else Path(state_dir)
        if self.state_dir is not None:
            _check_state_dir(self.state_dir)
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
            if not all(np.isfinite(value).all() for value in weights.values()):
                raise CoinferError(f"{self.artifact_path}: saved global links hold NaN or infinity; "
                                   "remove it to start from --links")
        self._lock = threading.Lock()
        self._round = round_
        self._weights = _read_only(weights)
        self._frame = encode_global(self._weights, round=round_, graph=self.graph_id, limits=self.limits)
        self._staged: dict[str, Update] = {}
        self._rejected: deque[dict[str, Any]] = deque(maxlen=REJECTIONS_SHOWN)
        self.counters = dict.fromkeys(("bytes_received", "bytes_sent", "updates_accepted", "updates_refused",
                                       "updates_clipped", "aborted_uploads", "rounds_rejected"), 0)

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
                    "clients": len(self.clients), "staged": sorted(self._staged), "rules": self._rules(),
                    **self.counters, "rejected": list(self._rejected)}

    def graph_info(self) -> dict[str, Any]:
        with self._lock:
            return {"description": self.description, "graph": self.graph_id, "round": self._round,
                    "min_clients": self.min_clients}

    def note_aborted(self) -> None:
        """Count an upload whose client hung up before sending its whole body."""
        with self._lock:
            self.counters["aborted_uploads"] += 1

    def submit(self, body: bytes, sender: Collection[str]) -> dict[str, Any]:
        """Decode, check and stage one update from a caller whose credential speaks for the
        client names ``sender`` (:meth:`ClientRegistry.speaks_for`); close the round when
        ``min_clients`` are staged."""
        with self._lock:
            self.counters["bytes_received"] += len(body)
        try:
            update = decode_update(body, self.shapes, self.graph_id, self.limits)
        except (wire.WireError, FederatedError) as error:
            self._refuse(f"malformed update: {error}")
        if update.client not in self.clients:
            self._refuse(f"client {update.client!r} is not registered at this aggregator", status=403)
        if update.client not in sender:
            self._refuse(f"this token does not speak for client {update.client!r}", status=403)
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
            rejected = None
            if closed:
                try:
                    rejected = self._close_round()
                except AggregationError as error:  # the disk, not the update: the client may send it again
                    del self._staged[update.client]
                    self.counters["updates_refused"] += 1
                    log.error("MLink %s; the update from %r is not staged", error, update.client)
                    raise AggregationError(f"{error}; the update is not staged, send it again",
                                           status=error.status) from None
            self.counters["updates_accepted"] += 1
            return {"accepted": True, "round": update.round, "staged": staged, "closed": closed,
                    "rejected": rejected}

    def _refuse(self, message: str, status: int = 400) -> NoReturn:
        with self._lock:
            self.counters["updates_refused"] += 1
        raise AggregationError(message, status=status)

    def _rules(self) -> dict[str, Any]:
        """The rules as JSON (an unbounded clip factor or growth as null)."""
        return {key: (None if isinstance(value, float) and math.isinf(value) else value)
                for key, value in asdict(self.rules).items()}

    def _close_round(self) -> str | None:
        """Combine the staged updates into new arrays, check, save, then swap them in; or discard
        the round (returning why) when the result diverged. The caller holds the lock."""
        updates = list(self._staged.values())
        samples = [update.samples for update in updates] if self.weight_by_samples else None
        result = aggregate(self._weights, [update.delta for update in updates], samples, self.rules)
        next_round = self._round + 1
        try:
            check_divergence(self._weights, result.weights, self.rules.max_growth)
        except DivergenceError as error:
            names = sorted(update.client for update in updates)
            self.counters["rounds_rejected"] += 1
            self.counters["updates_clipped"] += sum(result.clipped)
            self._rejected.append({"round": self._round, "clients": names, "reason": str(error)})
            log.warning("MLink round %d rejected (clients %s): %s; the global links stay as they were, "
                        "nothing is saved", self._round, ", ".join(names), error)
            frame = encode_global(self._weights, round=next_round, graph=self.graph_id, limits=self.limits)
            self._round, self._frame, self._staged = next_round, frame, {}
            return str(error)
        new = _read_only(result.weights)
        frame = encode_global(new, round=next_round, graph=self.graph_id, limits=self.limits)
        if self.state_dir is not None:
            try:
                self._save(self.state_dir, new, next_round)
            except (OSError, CoinferError) as error:
                raise AggregationError(f"round {self._round} could not be saved: {error}",
                                       status=503) from None
        self.counters["updates_clipped"] += sum(result.clipped)
        self._weights, self._round, self._frame, self._staged = new, next_round, frame, {}
        return None

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
    """The FastAPI application serving ``aggregator``; every route needs a known bearer token:
    ``token`` (the service's: the operator, and the clients listed without a token of their own)
    or a registered client's own."""
    # Answers AggregationError; the routes check the token (the API description needs the service's).
    app, _ = create_service_app("coinfer MLink aggregation service", AggregationError, token)
    add_routes(app, aggregator, token, options)
    return app


def add_routes(app: FastAPI, aggregator: LinkAggregator, token: str,
               options: ServiceOptions = ServiceOptions()) -> None:
    """Add the aggregation endpoints serving ``aggregator`` to ``app``, each behind a known bearer
    token (``token``, or a registered client's own); ``app`` must answer :class:`AggregationError`
    (it does when it answers :class:`~coinfer.sdk.service.ServiceError`). ``coinfer cloud serve``
    hosts them next to other services in one application."""
    if not token:
        raise CoinferError("the MLink aggregation service needs a non-empty token")
    owner = aggregator.clients.owner_of(token)
    if owner is not None:
        raise CoinferError(f"client {owner!r} has the service token as its own; give it another token")
    if options.max_request_bytes < aggregator.max_update_bytes:
        raise CoinferError(f"a request limit of {options.max_request_bytes} bytes is below one update of "
                           f"this graph ({aggregator.max_update_bytes} bytes); raise --max-request-mib")

    def caller(request: Request) -> frozenset[str]:
        """The client names this request's token speaks for; 401 for an unknown token."""
        names = aggregator.clients.speaks_for(request.headers.get("authorization", ""), token)
        if names is None:
            raise AggregationError("missing or wrong bearer token", status=401)
        return names

    router = APIRouter(dependencies=[Depends(caller)])
    limit = aggregator.max_update_bytes

    @router.get(GRAPH_PATH)
    def graph() -> dict[str, Any]:
        return aggregator.graph_info()

    @router.get(GLOBAL_PATH)
    def global_weights() -> Response:
        return Response(aggregator.global_frame(), media_type=CONTENT_TYPE)

    @router.post(UPDATES_PATH)
    async def updates(request: Request, sender: frozenset[str] = Depends(caller)) -> dict[str, Any]:
        try:
            body = await read_limited_body(request, limit, AggregationError)
        except ClientDisconnect:
            aggregator.note_aborted()
            raise AggregationError("the client hung up before sending the whole update") from None
        return await run_in_threadpool(aggregator.submit, body, sender)

    @router.get(STATUS_PATH)
    def status() -> dict[str, Any]:
        return aggregator.status()

    app.include_router(router)
