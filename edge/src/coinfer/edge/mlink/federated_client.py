"""An edge server's side of federated link training: fetch the global links, train, upload the change.

The cameras' model outputs stay on the edge server; only the weight delta of the link
graph (an ``mlink-update`` frame, :mod:`coinfer.sdk.mlink.fedavg`) goes to the cloud
aggregator (:mod:`coinfer.cloud.mlink.server`). Speaks HTTP with ``urllib`` and counts the
bytes of every request and response body it exchanges. PyTorch is imported only when a
graph is built or trained (by :mod:`coinfer.sdk.mlink`), not when this module loads.

The aggregator accepts updates only from the client names on its list (``coinfer mlink
serve --clients``), each under the token registered for it: a client's own token, or the
service token for a client listed without one. A name the token does not speak for is
refused with 403.

Example::

    client = FederatedClient("http://127.0.0.1:8300", token, "edge-1")   # edge-1's own token
    graph = client.fetch_graph()                       # architecture + current global weights
    for _ in range(5):
        result = client.train_round(graph, outputs, epochs=3)   # aligned {model: outputs}
        print(result.round, result.bytes_sent, result.bytes_received)
        client.wait_for_round(result.round + 1, timeout=600)     # until the others sent theirs
    client.fetch_global(graph)                          # the aggregated links, ready to predict
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.fedavg import (
    CONTENT_TYPE,
    GLOBAL_PATH,
    GRAPH_PATH,
    STATUS_PATH,
    UPDATES_PATH,
    FederatedError,
    check_client_name,
    decode_global,
    encode_update,
    graph_id,
    weight_delta,
    weight_shapes,
)
from coinfer.sdk.wire import WireError

if TYPE_CHECKING:
    from coinfer.sdk.mlink import LinkGraph

__all__ = ["FederatedClient", "FederatedClientError", "RoundResult"]


class FederatedClientError(CoinferError):
    """The aggregator refused a request (``status`` is its HTTP status) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RoundResult:
    """What one :meth:`FederatedClient.train_round` did.

    ``bytes_sent``/``bytes_received`` are the HTTP bodies of this call (the update frame out;
    the global frame and the JSON reply in); ``closed`` says this update completed the round.
    """

    round: int
    closed: bool
    staged: int
    samples: int
    bytes_sent: int
    bytes_received: int


class FederatedClient:
    """One edge server (``name``, as registered at the aggregator) in federated link training;
    ``token`` is the one registered for that name (its own, or the service token)."""

    def __init__(self, url: str, token: str, name: str, *, timeout: float = 60.0,
                 max_reply_bytes: int = 256 << 20) -> None:
        self.url = url.rstrip("/")
        self.name = check_client_name(name)
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._token = token
        self.bytes_sent = 0
        self.bytes_received = 0

    def fetch_graph(self) -> LinkGraph:
        """The aggregator's graph, rebuilt from its description and loaded with the global weights."""
        from coinfer.sdk.mlink import LinkError, LinkGraph, OutputError

        answer = self._json("GET", GRAPH_PATH)
        try:
            graph = LinkGraph.from_description(answer["description"])
        except (KeyError, TypeError, LinkError, OutputError) as error:
            raise FederatedClientError(f"{self.url}{GRAPH_PATH}: unusable graph description: "
                                       f"{error}") from error
        if graph_id(graph.describe()) != answer.get("graph"):
            raise FederatedClientError(f"{self.url}{GRAPH_PATH}: the graph rebuilt here differs from the "
                                       "aggregator's (different coinfer versions?)")
        self.fetch_global(graph)
        return graph

    def fetch_global(self, graph: LinkGraph) -> int:
        """Load the current global weights into ``graph``; returns their round."""
        body = self._request("GET", GLOBAL_PATH, None)
        try:
            model = decode_global(body, weight_shapes(graph.weights()), graph_id(graph.describe()))
        except (WireError, FederatedError) as error:
            raise FederatedClientError(f"{self.url}{GLOBAL_PATH}: unusable global model: {error}") from error
        graph.set_weights(model.weights)
        return model.round

    def train_round(self, graph: LinkGraph, outputs: Mapping[str, Any],
                    epochs: int | None = None) -> RoundResult:
        """Start from the current global links, fit them on ``outputs`` and upload the delta.

        ``graph`` keeps the locally trained weights afterwards. Raises
        :class:`FederatedClientError` with status 409 when the round closed while training
        (fetch and train again) or this client already contributed to it, and with 403 when
        ``name`` is not registered or the token is not the one registered for it.
        """
        sent, received = self.bytes_sent, self.bytes_received
        round_ = self.fetch_global(graph)
        theta = graph.weights()
        samples = graph.check_aligned(outputs, graph.models)
        graph.fit(outputs, epochs=epochs)
        frame = encode_update(weight_delta(graph.weights(), theta), round=round_, client=self.name,
                              samples=samples, graph=graph_id(graph.describe()))
        answer = self._json("POST", UPDATES_PATH, frame)
        return RoundResult(round=int(answer["round"]), closed=bool(answer["closed"]),
                           staged=int(answer["staged"]), samples=samples,
                           bytes_sent=self.bytes_sent - sent, bytes_received=self.bytes_received - received)

    def status(self) -> dict[str, Any]:
        return self._json("GET", STATUS_PATH)

    def wait_for_round(self, round_: int, timeout: float = 60.0, interval: float = 0.1) -> dict[str, Any]:
        """Poll the status until the aggregator reaches ``round_``; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["round"] >= round_:
                return status
            if time.monotonic() > deadline:
                raise FederatedClientError(f"round {round_} not reached within {timeout} s "
                                           f"(the aggregator is at round {status['round']}, "
                                           f"{len(status['staged'])} of {status['min_clients']} "
                                           "updates staged)")
            time.sleep(interval)

    def _json(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        data = self._request(method, path, body)
        try:
            answer = json.loads(data)
        except ValueError as error:
            raise FederatedClientError(f"{method} {self.url}{path}: reply is not JSON: {error}") from error
        if not isinstance(answer, dict):
            raise FederatedClientError(f"{method} {self.url}{path}: reply is not a JSON object")
        return answer

    def _request(self, method: str, path: str, body: bytes | None) -> bytes:
        headers = {"Authorization": f"Bearer {self._token}"}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self.bytes_sent += len(body or b"")
                data = response.read(self.max_reply_bytes + 1)
        except urllib.error.HTTPError as error:
            self.bytes_sent += len(body or b"")
            raise FederatedClientError(f"{method} {self.url}{path}: HTTP {error.code}: {_detail(error)}",
                                       status=error.code) from error
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise FederatedClientError(f"cannot reach the MLink aggregator at {self.url}: "
                                       f"{reason}") from error
        if len(data) > self.max_reply_bytes:
            raise FederatedClientError(f"{method} {self.url}{path}: reply over {self.max_reply_bytes} bytes")
        self.bytes_received += len(data)
        return data


def _detail(error: urllib.error.HTTPError) -> str:
    """The service's ``{"detail": message}``, or the raw start of the body."""
    text = error.read(4096).decode("utf-8", "replace")
    try:
        return str(json.loads(text)["detail"])
    except (ValueError, KeyError, TypeError):
        return text
