"""Property-based fuzzing of coinfer's five HTTP services, each a real server on 127.0.0.1.

The edge gateway (``gate serve``), the InFi detection service (``infi serve``), the STIP model
server (``stip serve``), the MLink aggregation service (``mlink serve``) and the split tail
service (:mod:`coinfer.edge.split.service`) each get random requests from hypothesis, sent
as raw bytes on a fresh TCP connection: known routes and junk paths, every method, with and
without the bearer token, random headers and content types, ``Content-Length`` lies,
chunked bodies, and bodies that are junk bytes, JSON, or valid wire frames (real video
packets, embeddings, link-weight deltas, JPEGs, the int8 tensors crossing a split) truncated
and mutated in their fixed header, msgpack header, array table, dtypes, shapes and values.

After every request: no 5xx answer, an answer (not a reset or a silent close) to every
well-formed HTTP request, and no 2xx answer without the token except ``/healthz``. After
each run: nothing logged at ERROR or with a traceback, the process's memory grew by less
than :data:`MEMORY_BOUND`, what the service holds (streams, sessions, staged updates) is
within its limits, and a good request still gets the right answer.

``COINFER_HYPOTHESIS_EXAMPLES`` sets the random examples per service (default 200;
derandomized, so a run is reproducible); each service also sends a few seed requests first,
its numeric fields at the edges of their ranges. Example::

    COINFER_HYPOTHESIS_EXAMPLES=500 pytest tests/test_service_properties.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import hypothesis
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coinfer.sdk import wire

# pytest imports this file as tests.test_service_properties when the root is on sys.path
# (`python -m pytest` run there, as dev.py does), else as test_service_properties with tests/
# itself on sys.path (the `pytest` script).
if __package__:
    from . import service_probes as probes
else:
    import service_probes as probes

TOKEN = "property-test-service-token"
EXAMPLES = int(os.environ.get("COINFER_HYPOTHESIS_EXAMPLES", "200"))
#: ``COINFER_FUZZ_SEEDS=0`` skips the seed requests, to explore past a seed that fails.
SEEDS = os.environ.get("COINFER_FUZZ_SEEDS", "1") != "0"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
#: How much the test process's memory may grow over one service's run (generous: allocator
#: arenas and caches warm up; a leak per request of a few hundred examples shows anyway).
MEMORY_BOUND = 200 * probes.MiB
FIXED = struct.Struct("<4sBBHIQ")


# ----------------------------------------------------------------------------- raw HTTP


@dataclass(frozen=True)
class Request:
    """One HTTP request as the bytes sent. ``framing``: how the body is delimited --
    ``length`` (a true Content-Length), ``chunked``, ``none`` (no body), or the lies
    ``longer`` (declares ``declared`` bytes, sends fewer and hangs up), ``shorter``
    (declares fewer than it sends), ``both`` (Content-Length and chunked), ``raw`` (``body``
    is the whole request: junk). Lies and ``raw`` end with a half-close, so the server
    sees the end of the stream at once instead of waiting for its idle timeout."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str
    authorized: bool
    declared: int = 0

    @property
    def well_formed(self) -> bool:
        return self.framing in ("length", "chunked", "none")

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def encode(self, authority: str) -> bytes:
        if self.framing == "raw":
            return self.body
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        body = self.body
        if self.framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        elif self.framing in ("chunked", "both"):
            lines.append("Transfer-Encoding: chunked")
            if self.framing == "both":
                lines.append(f"Content-Length: {len(body)}")
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                            for part in (body[i:i + 1000] for i in range(0, len(body), 1000))) + b"0\r\n\r\n"
        elif self.framing in ("longer", "shorter"):
            lines.append(f"Content-Length: {self.declared}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 600 else self.body[:600] + b"..."
        return (f"Request({self.method} {self.target!r} headers={list(self.headers)} framing={self.framing}"
                f"{f' declared={self.declared}' if self.framing in ('longer', 'shorter') else ''} "
                f"authorized={self.authorized} body[{len(self.body)}]={shown!r})")


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no status line came back
    body: bytes
    error: str | None = None  # "reset" when the connection was reset

    def json(self) -> Any:
        return json.loads(self.body)


def send(url: str, request: Request) -> Answer:
    """Send ``request`` on a new connection and read the answer to its end."""
    host, port = url.removeprefix("http://").split(":")
    data = request.encode(f"{host}:{port}")
    received = bytearray()
    error = None
    with socket.create_connection((host, int(port)), timeout=probes.HANG_GUARD) as sock:
        try:
            sock.sendall(data)
            if not request.well_formed:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(1 << 16):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            error = "reset"
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if head.startswith(b"HTTP/1.") and len(parts) > 1 and parts[1].isdigit() else None
    if status is not None and b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return Answer(status, body, error)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


#: One ordinary request (see :func:`service_probes.call`), with this file's token unless told otherwise.
call = functools.partial(probes.call, token=TOKEN)


def check_answer(service: Service, request: Request, answer: Answer) -> None:
    """The per-request properties."""
    where = f"{service.name}: {request!r} -> {answer.status} {answer.error or ''} {answer.body[:800]!r}"
    assert answer.status is None or answer.status < 500, f"server error: {where}"
    if request.well_formed:
        assert answer.error is None, f"connection reset on a well-formed request: {where}"
        assert answer.status is not None, f"no answer to a well-formed request: {where}"
    if answer.status is not None and 200 <= answer.status < 300 and not request.authorized \
            and request.framing != "raw":  # raw bytes may spell any request, /healthz among them
        assert request.path in service.open_paths, f"answered without the token: {where}"


# ----------------------------------------------------------------------------- what each run checks


@contextlib.contextmanager
def fuzzing(service: Service) -> Iterator[None]:
    """The after-run properties around a run: a clean log and bounded memory. End the block
    with good requests: uvicorn logs an application's exception after it sent the 500, so
    the requests after the last random one are what make sure its log has arrived."""
    with probes.service_log() as log:
        before = probes.rss()
        yield
        grown = probes.rss() - before
    bad = log.bad
    assert not bad, f"{service.name} logged errors or tracebacks:\n" + "\n\n".join(bad)
    assert grown < MEMORY_BOUND, f"{service.name}: the process grew by {grown / probes.MiB:.0f} MiB"


# ----------------------------------------------------------------------------- generic strategies

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"]
EDGE_INTS = [0, 1, -1, 2, 7, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62,
             2**63 - 1, 2**63, 2**64 - 1, -2**31, -2**63]
#: Where a C decoder's int64 ends (msgpack carries ints up to 2**64 - 1).
INT64_EDGES = [2**63 - 1, 2**63, 2**64 - 1, -2**63, -2**63 + 1, -1]
EDGE_FLOATS = [0.0, -0.0, 1e-45, 1e38, -1e38, 3.4e38, 1e300, float("nan"), float("inf"), float("-inf")]
junk_scalars = (st.none() | st.booleans() | st.sampled_from(EDGE_INTS) | st.integers(-2**63, 2**64 - 1)
                | st.sampled_from(EDGE_FLOATS) | st.floats() | st.text(max_size=24) | st.binary(max_size=24))
junk_values = st.recursive(junk_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
WIRE_DTYPES = [np.dtype(code) for code in ("?", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2",
                                           "<f4", "<f8", "<c8", "<c16")]
ANY_DTYPES = WIRE_DTYPES + [np.dtype(code) for code in (">f4", ">i8", ">f8")]
any_arrays = hnp.arrays(dtype=st.sampled_from(ANY_DTYPES),
                        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
header_texts = st.sampled_from(["Content-Type", "Accept", "User-Agent", "X-Request-Id", "Cookie",
                                "Accept-Encoding", "X-Forwarded-For", "Origin", "Range", "If-None-Match"])
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
header_values = printable | st.text(st.characters(min_codepoint=0xA0, max_codepoint=0xFF), max_size=20) \
    | st.integers(1, 8000).map(lambda n: "v" * n)
json_bodies = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=16).map(lambda value: json.dumps(value).encode())
junk_bodies = (st.binary(max_size=3000) | json_bodies | st.sampled_from([
    b"", b"\x00" * 100, b"CNFR", b"CNFR" + b"\xff" * 30, b"{", b"\xff\xd8", b"\xff\xd8\xff\xc0",
    b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\0" * 40]))


def pack(message_type: int, header: Any, arrays: dict[Any, np.ndarray], *,
         table: Any = None, packed: bytes | None = None) -> bytes:
    """A frame as the wire spells it, built without any of encode's checks (so it can be wrong)."""
    if table is None:
        table = [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]
    payload = b"".join(np.ascontiguousarray(array).tobytes() for array in arrays.values())
    if packed is None:
        packed = msgpack.packb({"h": header, "a": table}, use_bin_type=True)
    return FIXED.pack(wire.MAGIC, wire.VERSION, message_type, 0, len(packed), len(payload)) + packed + payload


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place inside a header (keys and list positions), the header itself first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(value: Any, path: tuple, new: Any, delete: bool = False) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    head, rest = path[0], path[1:]
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = _replace(copy[head], rest, new, delete)
    return copy


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated_arrays(draw: st.DrawFn, arrays: dict[str, np.ndarray]) -> dict[Any, np.ndarray]:
    arrays = dict(arrays)
    names = list(arrays)
    how = draw(st.sampled_from(["dtype", "shape", "values", "fresh", "drop", "extra", "rename", "empty"]))
    name = draw(st.sampled_from(names)) if names else "x"
    array = arrays.get(name, np.zeros(3, np.float32))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "dtype":
            arrays[name] = array.astype(draw(st.sampled_from(ANY_DTYPES)))
        elif how == "shape":
            shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
            arrays[name] = np.resize(array, shape).astype(array.dtype)
        elif how == "values":
            changed = np.array(array, copy=True)
            if changed.size:
                flat = changed.reshape(-1)
                fits = [v for v in EDGE_INTS if np.can_cast(np.min_scalar_type(v), changed.dtype)] or [0]
                specials = EDGE_FLOATS if changed.dtype.kind in "fc" else fits
                for _ in range(draw(st.integers(1, 4))):
                    flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(specials))
                if draw(st.booleans()) and changed.dtype.kind in "fc":
                    changed *= draw(st.sampled_from([1e30, -1e30, 1e38, 0.0, float("nan")]))
            arrays[name] = changed
        elif how == "fresh":
            arrays[name] = draw(any_arrays)
        elif how == "drop" and names:
            del arrays[name]
        elif how == "extra":
            arrays[draw(st.text(max_size=12))] = draw(any_arrays)
        elif how == "rename" and names:
            arrays[draw(st.text(max_size=12))] = arrays.pop(name)
        else:
            arrays[name] = array.reshape(-1)[:0]
    return arrays


@st.composite
def mutated_frames(draw: st.DrawFn, messages: st.SearchStrategy[wire.Message]) -> bytes:
    """One frame of a valid-looking message, as is or broken in one or two ways."""
    message = draw(messages)
    header, arrays, kind = message.header, dict(message.arrays), int(message.type)
    table = None
    for _ in range(draw(st.integers(0, 2))):
        how = draw(st.sampled_from(["header", "header", "arrays", "arrays", "type", "table", "nest"]))
        if how == "header":
            path = draw(st.sampled_from(list(_paths(header))))
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "delete" and path:
                header = _replace(header, path, None, delete=True)
            elif action == "add":
                extra = {draw(st.text(max_size=8)): draw(junk_values)}
                header = {**header, **extra} if isinstance(header, dict) else extra
            elif path:
                header = _replace(header, path, draw(junk_values))
            else:
                header = draw(junk_values)
        elif how == "arrays":
            arrays = draw(mutated_arrays(arrays))
        elif how == "type":
            kind = draw(st.sampled_from([*range(1, 7), 0, 7, 255]))
        elif how == "table":
            table = [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()] or [["x"]]
            entry = draw(st.integers(0, len(table) - 1))
            field = draw(st.integers(-1, 2))
            junk = draw(st.sampled_from([
                [2**40, 2**40], [2**63 - 1], [2**64 - 1], [-1], [1.5], ["3"], [1] * 17, [[2]], None,
                ">f4", "|O", "<U4", "f4", "", 5, "<f4", "|u1", 2**64 - 1, "x" * 300]) | junk_values)
            if field < 0:  # the whole entry
                table[entry] = junk
            elif field < len(table[entry]):  # its name, dtype or shape
                table[entry] = _replace(table[entry], (field,), junk)
            else:  # a field too many
                table[entry] = [*table[entry], junk]
        else:
            depth = draw(st.sampled_from([31, 32, 33, 40, 100, 3000]))
            header = {"deep": _nested(min(depth, 400))} if depth <= 400 else header
            if depth > 400:  # past msgpack's own nesting limit: packed by hand
                deep = b"\x91" * depth + b"\xc0"
                packed = (b"\x82" + msgpack.packb("h") + b"\x81" + msgpack.packb("deep") + deep
                          + msgpack.packb("a") + msgpack.packb([]))
                return pack(kind, None, {}, packed=packed)
    frame = pack(kind, header, arrays, table=table)
    mangle = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "fixed", "trailing"]))
    if mangle == "truncate":
        frame = frame[:draw(st.integers(0, max(0, len(frame) - 1)))]
    elif mangle == "flip":
        data = bytearray(frame)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        frame = bytes(data)
    elif mangle == "fixed":
        fields = list(FIXED.unpack_from(frame))
        index = draw(st.integers(0, 5))
        limits = [None, 255, 255, 2**16 - 1, 2**32 - 1, 2**64 - 1]
        fields[index] = (draw(st.binary(min_size=4, max_size=4)) if index == 0
                         else draw(st.sampled_from([0, 1, 2, limits[index]]) | st.integers(0, limits[index])))
        frame = FIXED.pack(*fields) + frame[FIXED.size:]
    elif mangle == "trailing":
        frame += draw(st.binary(min_size=1, max_size=64))
    return frame


@st.composite
def frame_bodies(draw: st.DrawFn, messages: st.SearchStrategy[wire.Message], most: int = 3,
                 sequences: st.SearchStrategy[list[wire.Message]] | None = None) -> bytes:
    """One to ``most`` frames back to back (or one of ``sequences``, a run of messages that
    makes sense in order), each as is or mutated, sometimes with junk after."""
    if sequences is not None and draw(often):
        run = draw(sequences)
        broken = draw(st.sampled_from([None, *range(len(run))]))  # at most one frame of the run
        body = b"".join(draw(mutated_frames(st.just(message))) if n == broken else
                        pack(message.type, message.header, message.arrays) for n, message in enumerate(run))
    else:
        body = b"".join(draw(st.lists(mutated_frames(messages), min_size=1, max_size=most)))
    if not draw(often):
        body += draw(junk_bodies)
    return body


@dataclass
class Service:
    """What the fuzzer needs to know of one running service."""

    name: str
    url: str
    routes: list[tuple[str, str]]  # (method, path template with {id})
    ids: st.SearchStrategy[str]
    bodies: Callable[[str, str], st.SearchStrategy[bytes]]  # bodies for (path template, its {id})
    tokens: tuple[str, ...] = (TOKEN,)
    content_types: tuple[str, ...] = (probes.OCTETS,)
    open_paths: frozenset[str] = frozenset()
    #: Requests sent before the random ones: each numeric field at the edges of its range.
    seeds: list[Request] = dataclasses.field(default_factory=list)
    #: An id for the routes' ``{id}`` that names something the service holds.
    known_id: str = "x"

    def unauthorized(self) -> list[Request]:
        """Every route and documentation page, with no token and with a wrong one."""
        requests = []
        for method, template in [*self.routes, *DOCS]:
            target = template.format(id=quote(self.known_id, safe=""))
            for headers in ((), (("Authorization", "Bearer wrong"),)):
                requests.append(Request(method, target, headers, b"", "none", authorized=False))
        return requests


DOCS = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/docs/oauth2-redirect")]
#: True nine times in ten (hypothesis draws small integers far more often than others, so
#: ``integers(0, 9) > 0`` would not be).
often = st.sampled_from([True] * 9 + [False])


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` nine times in ten, else ``rare`` (``one_of`` does not weight its branches)."""
    return often.flatmap(lambda usual: common if usual else rare)
junk_ids = (st.text(max_size=40) | st.text(st.characters(codec="ascii"), max_size=80)
            | st.sampled_from(["", ".", "..", "%", "a/b", "x" * 65, "x" * 2000, "\x00", "é", "a b", "?"]))


@st.composite
def requests(draw: st.DrawFn, service: Service) -> Request:
    """Half the requests are deep (a route that takes a body, its method, the token, honest
    framing, the service's own kind of body, valid or broken), the others anything at all."""
    deep = draw(st.booleans())
    kind = "route" if deep else draw(st.sampled_from(["route"] * 16 + ["junk-path", "raw"]))
    if kind == "raw":
        body = draw(st.binary(max_size=600) | st.sampled_from([
            b"GET / HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n", b"\r\n\r\n\r\n", b"GET / HTTP/1.1\r\nX: \x00\r\n\r\n"]))
        return Request("", "", (), body, "raw", authorized=False)
    if deep:
        method, template = draw(st.sampled_from([route for route in service.routes if route[0] == "POST"]))
    else:
        method, template = draw(st.sampled_from(service.routes) if draw(often) else st.sampled_from(DOCS))
        if not draw(often):
            method = draw(st.sampled_from(METHODS))
    if kind == "junk-path":
        prefix = draw(st.sampled_from(["", "/v1", "/v1/gate/streams", "/v1/sessions", "/v1/mlink",
                                       "/v1/infi"]))
        target = prefix + "/" + quote(draw(st.text(max_size=60)), safe="/")
        ident = ""
    else:
        ident = draw(service.ids)
        target = template.format(id=quote(ident, safe=""))
    if not deep and not draw(often):
        target += "?" + quote(draw(st.text(max_size=40)), safe="=&")
    headers = []
    authorized = False
    if deep or draw(often):  # mostly the right token, so requests get past the check
        token: str | None = draw(st.sampled_from(service.tokens))
        scheme = "Bearer "
    else:
        token = draw(st.sampled_from([None, None, "wrong", "", TOKEN + "x", *service.tokens])
                     | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
        scheme = draw(st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "Basic ", ""]))
    if token is not None:
        value = scheme + token + draw(st.sampled_from([""] * 8 + [" ", "\t"]))
        headers.append(("Authorization", value))
        # HTTP strips the whitespace around a header value, so a trailing space still carries the token
        authorized = any(value.strip(" \t") == f"Bearer {known}" for known in service.tokens)
    content_type = draw(st.sampled_from(service.content_types) if deep and draw(often) else (
        st.sampled_from(service.content_types) | st.sampled_from([
            "", "application/json", "text/plain; charset=utf-8", "image/jpeg", "IMAGE/JPEG ; q=1",
            "multipart/form-data; boundary=x", probes.OCTETS]) | printable))
    if content_type:
        headers.append(("Content-Type", content_type))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(header_texts | st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)),
                        draw(header_values).strip()))
    if (deep or draw(often)) and method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        body = draw(service.bodies(template, ident) if kind == "route" else junk_bodies)
    else:
        body = draw(st.sampled_from([b""] * 6) | junk_bodies)
    framings = ["length"] * 10 + ["chunked"] * 2 + ([] if deep else ["none", "longer", "shorter", "both"])
    framing = draw(st.sampled_from(framings))
    declared = 0
    if framing == "none" and body:
        framing = "length"
    elif framing == "longer":
        declared = len(body) + draw(st.sampled_from([1, 100, 1 << 20, 2**40, 2**63 - 1])
                                    | st.integers(1, 10**6))
    elif framing == "shorter":
        if not body:
            framing = "length"
        else:
            declared = draw(st.integers(0, len(body) - 1))
    return Request(method, target, tuple(headers), body, framing, authorized, declared)


def post(path: str, body: bytes, token: str = TOKEN, content_type: str = probes.OCTETS) -> Request:
    """A plain, authorized POST: what a service's seed requests are."""
    headers = (("Authorization", f"Bearer {token}"), ("Content-Type", content_type))
    return Request("POST", path, headers, body, "length", authorized=True)


def run_fuzz(service: Service, after_each: Callable[[Request, Answer], None] | None = None) -> Counter:
    """Send the service's seed requests, then ``EXAMPLES`` random ones, checking each answer;
    returns how many got each status (printed, so ``pytest -s`` shows what the run reached)."""
    statuses: Counter = Counter()

    def check(request: Request) -> None:
        answer = send(service.url, request)
        statuses[answer.status if answer.error is None else answer.error] += 1
        check_answer(service, request, answer)
        if after_each is not None:
            after_each(request, answer)

    example = FUZZ(given(request=requests(service))(check))
    for seed in [*service.unauthorized(), *service.seeds] if SEEDS else []:  # run first, reported as they are
        example = hypothesis.example(request=seed)(example)
    example()
    print(f"{service.name}: answers {dict(statuses.most_common())}")
    return statuses


# ----------------------------------------------------------------------------- the edge gateway

STREAMS = ["cam-0", "cam-1", "cam-2", "cam-3"]


def upload_clip(url: str, stream: str, clip: SimpleNamespace, session: str, chunk: int = probes.CHUNK,
                token: str = TOKEN) -> dict[str, Any]:
    """Send the whole clip to ``stream`` as a camera would (parameters, chunks, end); the sums
    of the replies and every result."""
    from coinfer.sdk.gate.protocol import frames_path

    replies = []
    for body in probes.clip_bodies(clip, stream, session, chunk):
        status, answer = call(url, "POST", frames_path(stream), body, token=token)
        assert status == 200, (status, answer)
        replies.append(json.loads(answer))
    return probes.summarize(replies)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    pytest.importorskip("av")
    return probes.load_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def gateway(clip: SimpleNamespace) -> Iterator[Any]:
    from coinfer.edge.gateway import GatewayOptions, GatewayServer

    options = GatewayOptions(max_request_bytes=1 << 20, max_streams=16, plugin=probes.bright_plugin(),
                             redundancy={"bright": "iou"})
    with GatewayServer(options, TOKEN) as server:
        yield server


def gate_strategies(clip: SimpleNamespace, stream: str) -> SimpleNamespace:
    """Strategies of ``stream``'s gate messages from the clip: ``messages`` (any one message)
    and ``starts`` (a session's start as a camera sends it: parameters, then a chunk from a
    key frame so that what follows reaches the decoder, sometimes more chunks and the end).
    Half of the parameters and packets carry one field at an edge of its range."""
    from coinfer.sdk.gate.protocol import encode_end, encode_packets, encode_parameters

    sessions = st.sampled_from(["s1", "s2", "x" * 64])

    @st.composite
    def packets(draw: st.DrawFn, session: str | None = None, key: bool = False) -> wire.Message:
        start = draw(st.sampled_from(range(0, len(clip.packets), probes.GOP)) if key
                     else st.integers(0, len(clip.packets) - 1))
        count = draw(st.integers(1, 8))
        chosen = [(p.info, p.data, draw(st.booleans())) for p in clip.packets[start:start + count]]
        seq = draw(st.integers(0, 12) | st.sampled_from([2**31, 2**62, 2**63 - 1, 2**64 - 1]))
        message = wire.decode(encode_packets(stream, session or draw(sessions), seq, chosen))
        if draw(st.booleans()):  # one field of one packet at an edge of its type's range
            rows = [list(row) for row in message.header["packets"]]
            row, field = draw(st.integers(0, len(rows) - 1)), draw(st.sampled_from([0, 1, 2, 4, 7]))
            rows[row][field] = draw(st.sampled_from(INT64_EDGES) | st.sampled_from(EDGE_INTS) | st.none())
            message.header = {**message.header, "packets": rows}
        return message

    @st.composite
    def parameters(draw: st.DrawFn, session: str | None = None) -> wire.Message:
        message = wire.decode(encode_parameters(stream, session or draw(sessions), clip.parameters))
        if draw(st.booleans()):  # another codec, size, time base, rate or extradata
            field = draw(st.sampled_from(["codec", "width", "height", "time_base", "frame_rate",
                                          "extradata"]))
            if field == "codec":
                message.header["codec"] = draw(st.sampled_from(["h264", "hevc", "vp9", "av1", "mjpeg"]))
            elif field in ("width", "height"):
                message.header[field] = draw(st.sampled_from([1, 2, 16383, 16384, 16385, 0, -1, 2**63]))
            elif field == "extradata":
                message.arrays = {"extradata": np.frombuffer(draw(st.binary(max_size=64)), np.uint8)}
            else:
                message.header[field] = [draw(st.sampled_from(EDGE_INTS)), draw(st.sampled_from(EDGE_INTS))]
        return message

    @st.composite
    def starts(draw: st.DrawFn) -> list[wire.Message]:
        session = draw(st.sampled_from(["s1", "s2"]))
        run = [draw(parameters(session)), draw(packets(session, key=True))]
        run += draw(st.lists(packets(session), max_size=2))
        if draw(st.booleans()):
            run.append(wire.decode(encode_end(stream, session)))
        return run

    end = sessions.map(lambda s: wire.decode(encode_end(stream, s)))
    return SimpleNamespace(messages=st.one_of(parameters(), packets(), packets(), end), starts=starts())


def gate_seeds(clip: SimpleNamespace) -> list[Request]:
    """A session's start whose first packet has one field (index, pts, dts, size) at an int64
    edge, and a chunk numbered at one."""
    from coinfer.sdk.gate.protocol import encode_packets, encode_parameters, frames_path

    stream, first = STREAMS[0], clip.packets[0]
    seeds = []
    for field, value in [(0, 2**63), (1, 2**63), (1, 2**64 - 1), (2, 2**63), (2, -2**63), (7, 2**63)]:
        message = wire.decode(encode_packets(stream, "edge", 0, [(first.info, first.data, True)]))
        rows = [list(row) for row in message.header["packets"]]
        rows[0][field] = value
        chunk = pack(message.type, {**message.header, "packets": rows}, dict(message.arrays))
        seeds.append(post(frames_path(stream), encode_parameters(stream, "edge", clip.parameters) + chunk))
    for seq in (2**63 - 1, 2**64 - 1):
        chunk = encode_packets(stream, "edge", seq, [(first.info, first.data, True)])
        seeds.append(post(frames_path(stream), encode_parameters(stream, "edge", clip.parameters) + chunk))
    return seeds


def gate_service(gateway: Any, clip: SimpleNamespace) -> Service:
    from coinfer.sdk.gate.protocol import FRAMES_PATH

    def bodies(template: str, ident: str) -> st.SearchStrategy[bytes]:
        # frames of the URL's stream when it is one of the few the fuzzer may create (so the
        # slots the run takes are bounded), else of one of those (the service must refuse them)
        streams = st.just(ident) if ident in STREAMS else st.sampled_from(STREAMS)
        framed = streams.map(lambda s: gate_strategies(clip, s)).flatmap(
            lambda gate: frame_bodies(gate.messages, sequences=gate.starts))
        return mostly(framed, junk_bodies)

    return Service("the edge gateway", gateway.url,
                   [("POST", FRAMES_PATH.replace("{stream_id}", "{id}")), ("POST", FRAMES_PATH.replace(
                       "{stream_id}", "{id}")), ("GET", "/v1/gate/streams/{id}"), ("GET", "/healthz")],
                   mostly(st.sampled_from(STREAMS),
                          st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True) | junk_ids),
                   bodies, open_paths=frozenset({"/healthz"}), seeds=gate_seeds(clip), known_id=STREAMS[0])


def test_gateway_survives_random_requests(gateway: Any, clip: SimpleNamespace) -> None:
    service = gate_service(gateway, clip)
    reference = upload_clip(gateway.url, "ref-before", clip, "r")
    assert reference["accepted"] == reference["frames"] == probes.CLIP_FRAMES \
        and reference["decode_errors"] == 0
    assert not reference["resync"] and reference["dropped"] == 0 \
        and len(reference["results"]) == probes.CLIP_FRAMES
    with fuzzing(service):
        run_fuzz(service)
        streams = gateway.gateway.streams()
        assert len(streams) <= gateway.gateway.options.max_streams
        assert set(streams) <= {*STREAMS, "ref-before"}, streams
        for stream in streams:
            status = gateway.gateway.status(stream)
            assert len(status["last_results"]) <= gateway.gateway.options.results_kept
            assert len(status["decoder_messages"]) <= 8
        # A good stream still decodes and decides exactly as before the run.
        assert upload_clip(gateway.url, "ref-after", clip, "r") == reference
        after = gateway.gateway.status("ref-after")
        assert after["decode_errors"] == 0
        assert after["packets_decoded"] == after["frames_decoded"] == probes.CLIP_FRAMES


# ----------------------------------------------------------------------------- the InFi detection service


def face_jpeg(progressive: bool = False) -> bytes:
    import cv2
    from skimage import data

    # the astronaut's head and shoulders, as a doorway camera sees a face
    image = cv2.cvtColor(data.astronaut()[:256, 96:352], cv2.COLOR_RGB2BGR)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    ok, encoded = cv2.imencode(".jpg", image, flags)
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def detection() -> Iterator[Any]:
    pytest.importorskip("cv2")
    pytest.importorskip("skimage")
    from coinfer.edge.infi.service import DetectionOptions, DetectionServer

    with DetectionServer(DetectionOptions(max_request_bytes=200_000, max_width=640, max_height=480),
                         TOKEN) as server:
        yield server


@st.composite
def jpeg_bodies(draw: st.DrawFn, jpegs: list[bytes]) -> bytes:
    jpeg = draw(st.sampled_from(jpegs))
    how = draw(st.sampled_from(["as-is", "truncate", "flip", "size", "length", "marker", "prefix", "repeat"]))
    if how == "truncate":
        return jpeg[:draw(st.integers(0, len(jpeg) - 1))]
    if how == "flip":
        data = bytearray(jpeg)
        for _ in range(draw(st.integers(1, 12))):
            data[draw(st.integers(2, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "size":  # the frame header's height and width: 0, huge or anything
        sof = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
        sizes = st.sampled_from([0, 1, 8, 480, 481, 640, 641, 4096, 65535]) | st.integers(0, 65535)
        height, width = draw(sizes), draw(sizes)
        return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]
    if how == "length":  # a segment length field
        at = draw(st.sampled_from([i for i in range(2, min(len(jpeg), 700)) if jpeg[i] == 0xFF
                                   and jpeg[i + 1] not in (0x00, 0xFF)] or [2]))
        return jpeg[:at + 2] + struct.pack(">H", draw(st.integers(0, 65535))) + jpeg[at + 4:]
    if how == "marker":
        at = draw(st.integers(2, len(jpeg) - 2))
        return jpeg[:at] + bytes([0xFF, draw(st.integers(0, 255))]) + jpeg[at:]
    if how == "prefix":
        return b"\xff\xd8" + draw(st.binary(max_size=400))
    if how == "repeat":
        return jpeg + jpeg[2:]
    return jpeg


def detection_service(detection: Any, jpegs: list[bytes]) -> Service:
    from coinfer.edge.infi.service import DETECT_PATH, JPEG_TYPE, STATS_PATH

    def bodies(template: str, ident: str) -> st.SearchStrategy[bytes]:
        return mostly(jpeg_bodies(jpegs), junk_bodies)

    face = jpegs[0]
    sof = face.index(b"\xff\xc0")
    seeds = [post(DETECT_PATH, face[:sof + 5] + struct.pack(">HH", height, width) + face[sof + 9:],
                  content_type=JPEG_TYPE)
             for height, width in [(0, 0), (65535, 65535), (480, 640), (1, 1), (256, 640)]]
    return Service("the InFi detection service", detection.url,
                   [("POST", DETECT_PATH), ("POST", DETECT_PATH), ("GET", STATS_PATH), ("GET", "/healthz")],
                   junk_ids, bodies, content_types=(JPEG_TYPE, JPEG_TYPE, JPEG_TYPE + "; q=1"),
                   open_paths=frozenset({"/healthz"}), seeds=seeds)


def test_detection_service_survives_random_requests(detection: Any) -> None:
    import cv2

    from coinfer.edge.infi.service import DETECT_PATH, JPEG_TYPE

    face = face_jpeg()
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    small = cv2.imencode(".jpg", noise)[1].tobytes()
    service = detection_service(detection, [face, face_jpeg(progressive=True), small])
    status, before = call(detection.url, "POST", DETECT_PATH, face, content_type=JPEG_TYPE)
    assert status == 200 and json.loads(before)["count"] >= 1
    with fuzzing(service):
        run_fuzz(service)
        status, after = call(detection.url, "POST", DETECT_PATH, face, content_type=JPEG_TYPE)
        assert status == 200 and json.loads(after) == json.loads(before)
        assert (json.loads(after)["width"], json.loads(after)["height"]) == (256, 256)


# ----------------------------------------------------------------------------- the STIP model server

HIDDEN, VOCAB, POSITIONS = 32, 97, 64


def tiny_gpt2_stip(root: Path) -> tuple[Any, Any]:
    """A tiny random GPT-2 published for STIP: (its user bundle, the loaded cloud model and info)."""
    import torch
    import transformers as tf

    from coinfer.cloud.stip.publish import Protection, load_cloud_model, publish_model

    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4,
                                             n_positions=POSITIONS, bos_token_id=None, eos_token_id=None))
    with torch.no_grad():  # sharper logits than the initialisation's, so greedy decoding has no ties
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    instance = publish_model(model.eval(), root, Protection("private"))
    return instance.user, load_cloud_model(instance.server)


@pytest.fixture(scope="module")
def stip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    pytest.importorskip("transformers")
    from coinfer.cloud.stip.server import BackgroundServer, ServerOptions, StipModelServer

    user, (model, info) = tiny_gpt2_stip(tmp_path_factory.mktemp("stip"))
    options = ServerOptions(max_request_bytes=1 << 20, max_batch=8, max_sessions=8)
    server = StipModelServer(model, info, options)
    with BackgroundServer(server, TOKEN) as running:
        yield SimpleNamespace(url=running.url, server=server, user=user)


def stip_messages() -> st.SearchStrategy[wire.Message]:
    from coinfer.sdk.stip import protocol

    def embeds(batch: int, tokens: int) -> np.ndarray:
        return np.random.default_rng(batch * 100 + tokens).standard_normal((batch, tokens, HIDDEN)).astype(
            np.float32)

    @st.composite
    def forward(draw: st.DrawFn) -> wire.Message:
        batch, tokens = draw(st.integers(1, 3)), draw(st.integers(1, 6))
        arrays = {protocol.INPUTS: embeds(batch, tokens)}
        if draw(st.booleans()):
            arrays[protocol.MASK] = np.ones((batch, tokens), np.int64)
        return wire.Message(wire.MessageType.REQUEST, {}, arrays)

    step = st.integers(1, 3).map(lambda t: wire.Message(wire.MessageType.REQUEST, {}, {
        protocol.INPUTS: embeds(1, t)}))
    ids = st.integers(1, 4).map(lambda t: wire.Message(wire.MessageType.REQUEST, {}, {
        protocol.TOKEN_IDS: np.arange(t, dtype=np.int64)[None]}))
    return st.one_of(forward(), step, ids)


def stip_service(stip: SimpleNamespace, live: dict[str, str]) -> Service:
    from coinfer.sdk.stip import protocol

    def bodies(template: str, ident: str) -> st.SearchStrategy[bytes]:
        return mostly(frame_bodies(stip_messages(), most=1),
                      frame_bodies(stip_messages(), most=2) | junk_bodies)

    sessions = protocol.SESSIONS_PATH
    known = st.sampled_from(["live"] * 6 + ["nope"]).map(lambda key: live.get(key, key))
    rows = np.random.default_rng(2).standard_normal((2, 5, HIDDEN)).astype(np.float32)

    def frame(**arrays: np.ndarray) -> bytes:
        return wire.encode(wire.Message(wire.MessageType.REQUEST, {}, arrays))

    seeds = [post(protocol.FORWARD_PATH, frame(**{protocol.INPUTS: rows, protocol.MASK: mask}))
             for mask in (np.full((2, 5), 2**63 - 1, np.int64), np.full((2, 5), -2**63, np.int64),
                          np.full((2, 5), 2**64 - 1, np.uint64), np.zeros((2, 5), np.int64),
                          np.zeros((2, 5), bool), np.array([[1] * 5, [0] * 5], np.uint8))]
    with np.errstate(over="ignore"):  # float32's largest, smallest and zero; some rows overflow to inf
        seeds += [post(protocol.FORWARD_PATH, frame(**{protocol.INPUTS: rows * scale}))
                  for scale in (np.float32(3.4e38), np.float32(1e-45), np.float32(0))]
        seeds += [post(f"{sessions}/{live['live']}/step", frame(**{protocol.INPUTS: rows[:1] * scale}))
                  for scale in (np.float32(3.4e38), np.float32(0))]
    seeds += [post(protocol.FORWARD_PATH, frame(**{protocol.INPUTS: np.zeros(shape, np.float32)}))
              for shape in ((8, POSITIONS, HIDDEN), (9, 1, HIDDEN), (1, POSITIONS + 1, HIDDEN),
                            (0, 1, HIDDEN), (1, 0, HIDDEN))]
    return Service("the STIP model server", stip.url,
                   [("GET", protocol.INFO_PATH), ("POST", protocol.FORWARD_PATH),
                    ("POST", protocol.FORWARD_PATH), ("POST", sessions), ("POST", sessions + "/{id}/step"),
                    ("POST", sessions + "/{id}/step"), ("DELETE", sessions + "/{id}")],
                   mostly(known, junk_ids), bodies, seeds=seeds, known_id=live["live"])


def test_stip_server_survives_random_requests(stip: SimpleNamespace) -> None:
    from coinfer.device.stip import STIPClient
    from coinfer.sdk.stip import protocol

    client = STIPClient.create_from_bundle(stip.user, stip.url, TOKEN)
    prompt, ids = [5, 17, 42], np.random.default_rng(1).integers(0, VOCAB, (2, 9))
    generated, logits = client.generate(prompt, 8), client.forward(ids)
    live = {"live": json.loads(call(stip.url, "POST", protocol.SESSIONS_PATH)[1])["session"]}
    service = stip_service(stip, live)
    limit = stip.server.options.max_sessions
    unanswered = 0  # sessions possibly opened for a client that hung up: held until they idle out

    def after_each(request: Request, answer: Answer) -> None:
        nonlocal unanswered
        # Sessions the fuzzer opened are closed again, as a client would, so the slots last the run.
        opening = request.path == protocol.SESSIONS_PATH and request.method == "POST"
        unanswered += opening and answer.status is None
        if opening and answer.status == 200:
            opened = answer.json()["session"]
            assert call(stip.url, "DELETE", f"{protocol.SESSIONS_PATH}/{opened}")[0] == 200
        if request.path == f"{protocol.SESSIONS_PATH}/{live['live']}" and answer.status == 200:
            live["live"] = json.loads(call(stip.url, "POST", protocol.SESSIONS_PATH)[1])["session"]
        assert len(stip.server._sessions) <= limit  # what the server holds stays within its limit

    with fuzzing(service):
        run_fuzz(service, after_each)
        assert client.generate(prompt, 8) == generated
        np.testing.assert_array_equal(client.forward(ids), logits)
        call(stip.url, "DELETE", f"{protocol.SESSIONS_PATH}/{live['live']}")
        assert len(stip.server._sessions) <= unanswered


# ----------------------------------------------------------------------------- the MLink aggregation service

OWN_TOKEN, GOOD_TOKENS = "edge-own-token", {"good-1": "good-1-token", "good-2": "good-2-token"}
SHARED = ["edge-0", "edge-1", "edge-2"]


@pytest.fixture(scope="module")
def mlink() -> Iterator[SimpleNamespace]:
    pytest.importorskip("torch")
    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, create_app, token_digest
    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec
    from coinfer.sdk.service import ThreadedServer

    graph = LinkGraph.create({"counts": OutputSpec.classes(4), "speech": OutputSpec.presence()},
                             options=LinkOptions(epochs=1))
    registry = ClientRegistry({**dict.fromkeys(SHARED), "edge-own": token_digest(OWN_TOKEN),
                               **{name: token_digest(token) for name, token in GOOD_TOKENS.items()}})
    aggregator = LinkAggregator(graph, 2, clients=registry)  # the service's default robust rules
    with ThreadedServer(create_app(aggregator, TOKEN), name="the MLink aggregator") as running:
        yield SimpleNamespace(url=running.url, aggregator=aggregator, description=graph.describe())


def mlink_messages(aggregator: Any) -> st.SearchStrategy[wire.Message]:
    from coinfer.sdk.mlink import fedavg

    shapes = aggregator.shapes

    @st.composite
    def update(draw: st.DrawFn) -> wire.Message:
        client = draw(st.sampled_from([*SHARED * 3, "edge-own", "good-1", "mallory", "../etc", "x" * 65]))
        now = aggregator.round
        round_ = draw(st.sampled_from([now] * 8 + [now + 1, 0, 2**62, 2**62 + 1, -1]))
        samples = draw(st.sampled_from([1, 10, 1000, fedavg.MAX_SAMPLES, fedavg.MAX_SAMPLES + 1, 0]))
        scale = draw(st.sampled_from([0.01, 0.01, 1.0, 1e30, 3e38, 0.0]))
        seed = draw(st.integers(0, 3))
        rng = np.random.default_rng(seed)
        with np.errstate(over="ignore"):  # 3e38 x normal: some infinities, which must be refused
            delta = {name: (scale * rng.standard_normal(shape)).astype(np.float32)
                     for name, shape in shapes.items()}
        header = {"kind": draw(st.sampled_from(["mlink-update"] * 6 + ["mlink-global"])), "round": round_,
                  "client": client, "samples": samples, "graph": aggregator.graph_id}
        return wire.Message(wire.MessageType.TENSORS, header, delta)

    return update()


def mlink_service(mlink: SimpleNamespace) -> Service:
    from coinfer.sdk.mlink import fedavg

    def bodies(template: str, ident: str) -> st.SearchStrategy[bytes]:
        # the round in a frame is read from the service at each draw, so frames can be current
        return mostly(frame_bodies(mlink_messages(mlink.aggregator), most=1), junk_bodies)

    aggregator = mlink.aggregator

    def update(client: str, value: float, samples: int = fedavg.MAX_SAMPLES, token: str = TOKEN) -> Request:
        delta = {name: np.full(shape, value, np.float32) for name, shape in aggregator.shapes.items()}
        return post(fedavg.UPDATES_PATH, fedavg.encode_update(delta, round=aggregator.round, client=client,
                                                              samples=samples, graph=aggregator.graph_id),
                    token=token)

    # float32's largest values, opposite signs, from two clients close a round (min_clients 2)
    seeds = [update("edge-0", 3.4e38), update("edge-1", -3.4e38)]
    return Service("the MLink aggregation service", mlink.url,
                   [("GET", fedavg.GRAPH_PATH), ("GET", fedavg.GLOBAL_PATH), ("GET", fedavg.STATUS_PATH),
                    *[("POST", fedavg.UPDATES_PATH)] * 3],
                   junk_ids, bodies, tokens=(TOKEN, TOKEN, TOKEN, OWN_TOKEN), seeds=seeds)


def good_round(mlink: SimpleNamespace) -> None:
    """good-1 and good-2 complete a round (after closing one the fuzzer left half staged); the
    new global weights are the rules' combination of exactly their two updates."""
    from coinfer.sdk.mlink import fedavg, robust

    aggregator = mlink.aggregator

    def submit(name: str, delta: dict[str, np.ndarray], samples: int) -> dict:
        frame = fedavg.encode_update(delta, round=aggregator.round, client=name, samples=samples,
                                     graph=aggregator.graph_id)
        status, answer = call(mlink.url, "POST", fedavg.UPDATES_PATH, frame, token=GOOD_TOKENS[name])
        assert status == 200, answer
        return json.loads(answer)

    rng = np.random.default_rng(11)
    base = {name: (0.01 * rng.standard_normal(shape)).astype(np.float32)
            for name, shape in aggregator.shapes.items()}

    def honest() -> dict[str, np.ndarray]:
        return {name: (value + 0.001 * rng.standard_normal(value.shape)).astype(np.float32)
                for name, value in base.items()}

    if json.loads(call(mlink.url, "GET", fedavg.STATUS_PATH)[1])["staged"]:
        assert submit("good-1", honest(), 10)["closed"]
    round_, theta = aggregator.global_weights()
    deltas = [honest(), honest()]
    assert not submit("good-1", deltas[0], 100)["closed"]
    reply = submit("good-2", deltas[1], 120)
    assert reply["closed"] and reply["rejected"] is None and aggregator.round == round_ + 1
    expected = robust.aggregate(theta, deltas, [100, 120], aggregator.rules).weights
    served = fedavg.decode_global(call(mlink.url, "GET", fedavg.GLOBAL_PATH)[1], aggregator.shapes,
                                  aggregator.graph_id)
    assert served.round == round_ + 1
    for name, value in expected.items():
        np.testing.assert_allclose(served.weights[name], value, rtol=1e-6, atol=1e-7)
        mean = theta[name] + (deltas[0][name] + deltas[1][name]) / 2
        np.testing.assert_allclose(served.weights[name], mean, atol=5e-3)


def test_mlink_service_survives_random_requests(mlink: SimpleNamespace) -> None:
    from coinfer.sdk.mlink import fedavg

    aggregator = mlink.aggregator
    good_round(mlink)
    service = mlink_service(mlink)  # its seeds are for the round now open

    def after_each(request: Request, answer: Answer) -> None:
        status = aggregator.status()
        assert len(status["staged"]) < aggregator.min_clients, status
        assert set(status["staged"]) <= {*SHARED, "edge-own"}, status
        if answer.status == 200 and request.path == fedavg.UPDATES_PATH and request.well_formed:
            # an accepted update names a client its token speaks for: edge-own only with its own
            client = wire.decode(request.body).header["client"]
            token = dict(request.headers)["Authorization"].strip(" \t").removeprefix("Bearer ")
            assert client in ({"edge-own"} if token == OWN_TOKEN else set(SHARED)), (request, answer)

    with fuzzing(service):
        run_fuzz(service, after_each)
        _, weights = aggregator.global_weights()
        assert all(np.isfinite(value).all() for value in weights.values())
        status, answer = call(mlink.url, "GET", fedavg.GRAPH_PATH)
        assert status == 200 and json.loads(answer)["graph"] == aggregator.graph_id
        assert json.loads(answer)["description"] == json.loads(json.dumps(mlink.description))
        good_round(mlink)


# ----------------------------------------------------------------------------- the split tail service

#: The tiny split graph's sizes, and the samples one request may hold (the service's max_batch).
SPLIT_FEATURES, SPLIT_WIDTH, SPLIT_CLASSES, SPLIT_MAX_BATCH = 16, 8, 10, 4
#: The largest scale an int8 tensor may carry (255 steps of it stay finite), and the next float32.
SPLIT_MAX_SCALE = np.float32(np.finfo(np.float32).max / 256)
SCALE_EDGES = [0.0, -0.0, -1.0, 1e-45, float(SPLIT_MAX_SCALE),
               float(np.nextafter(SPLIT_MAX_SCALE, np.float32(np.inf))), 3.4e38, float("nan"), float("inf"),
               float("-inf")]
ZERO_POINT_EDGES = [-128, 127, -129, 128, 2**31 - 1, -2**31]
INDEX_EDGES = [SPLIT_FEATURES - 1, -SPLIT_FEATURES, SPLIT_FEATURES, -SPLIT_FEATURES - 1, *INT64_EDGES]


def tiny_split_graph() -> Any:
    """Two branches cut so that three tensors cross: the device makes ``a = relu(x @ w1)`` and
    ``idx = argmax(x)`` (an int64 index, which travels in its own dtype); the edge runs
    ``sigmoid(x) @ w2`` (so ``x`` crosses too, quantised like ``a``), looks ``idx`` up in a
    table, and makes ``logits = (a + sigmoid(x) @ w2 + table[idx]) @ w3``."""
    from onnx import TensorProto, helper, numpy_helper

    from coinfer.sdk.split.graph import SplitGraph

    rng = np.random.default_rng(5)
    shapes = {"w1": (SPLIT_FEATURES, SPLIT_WIDTH), "w2": (SPLIT_FEATURES, SPLIT_WIDTH),
              "table": (SPLIT_FEATURES, SPLIT_WIDTH), "w3": (SPLIT_WIDTH, SPLIT_CLASSES)}
    weights = [numpy_helper.from_array((0.5 * rng.standard_normal(shape)).astype(np.float32), name)
               for name, shape in shapes.items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=0),
             helper.make_node("Sigmoid", ["x"], ["b"]), helper.make_node("MatMul", ["b", "w2"], ["c"]),
             helper.make_node("Gather", ["table", "idx"], ["e"], axis=0),
             helper.make_node("Add", ["a", "c"], ["s"]), helper.make_node("Add", ["s", "e"], ["t"]),
             helper.make_node("MatMul", ["t", "w3"], ["logits"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SPLIT_FEATURES])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", SPLIT_CLASSES])]
    return SplitGraph(helper.make_model(helper.make_graph(nodes, "split", inputs, outputs, weights)))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from coinfer.edge.split import SplitServer, SplitServiceOptions
    from coinfer.sdk.split.bundle import export_split

    graph = tiny_split_graph()
    device, edge = export_split(graph, graph.cut_of(frozenset({0, 1, 2})),
                                tmp_path_factory.mktemp("split") / "out", "int8")
    assert [tensor.name for tensor in edge.spec.crossing] == ["x", "a", "idx"]
    with SplitServer(edge, TOKEN, SplitServiceOptions(max_batch=SPLIT_MAX_BATCH)) as server:
        yield SimpleNamespace(url=server.url, service=server.service, device=device, spec=edge.spec)


def split_tensors(spec: Any, batch: int, seed: int, magnitude: float = 1.0) -> dict[str, np.ndarray]:
    """Crossing tensors as the head makes them: floats of about ``magnitude`` (clipped to half
    float32's range, the widest span int8 can carry), indices within the table."""
    from coinfer.sdk.split.tensors import sample_shape

    rng = np.random.default_rng(seed)
    made = {}
    for tensor in spec.crossing:
        shape = (batch, *sample_shape(tensor))
        if tensor.numpy_dtype.kind == "f":
            with np.errstate(over="ignore"):
                values = np.clip(magnitude * rng.standard_normal(shape), -1.6e38, 1.6e38)
            made[tensor.name] = values.astype(tensor.numpy_dtype)
        else:
            made[tensor.name] = rng.integers(0, SPLIT_FEATURES, shape).astype(tensor.numpy_dtype)
    return made


def split_arrays(spec: Any, batch: int, seed: int, magnitude: float = 1.0) -> dict[str, np.ndarray]:
    """A frame's arrays for ``batch`` samples, encoded as the device's codec does (for a batch
    of 0, which the codec refuses, the layout's arrays with no rows)."""
    if batch < 1:
        return {array.name: np.zeros((0, *array.shape), array.dtype) for array in spec.codec.arrays}
    return spec.codec.encode(split_tensors(spec, batch, seed, magnitude))


def split_messages(spec: Any) -> st.SearchStrategy[wire.Message]:
    """Requests for the tail: a batch (mostly within the limit) encoded by the device's codec,
    as is or with one split field wrong: the identity in the header (fingerprint, cut,
    encoding), an int8 tensor's scales or zero points, a tensor sent unquantised, an index,
    or one array's batch."""
    from coinfer.sdk.split import protocol

    codec = spec.codec
    scales = [array.name for array in codec.arrays if array.name.endswith(protocol.SCALE_SUFFIX)]
    zero_points = [array.name for array in codec.arrays if array.name.endswith(protocol.ZERO_POINT_SUFFIX)]
    floats = [tensor.name for tensor in spec.crossing if tensor.numpy_dtype.kind == "f"]
    indices = [tensor.name for tensor in spec.crossing if tensor.numpy_dtype.kind in "iu"]
    identity = dict(spec.identity)
    others = {field: ["0" * len(value), value.upper(), value[:-1], value + "0"]
              for field, value in identity.items() if field != "encoding"}
    others["encoding"] = ["float32", "float16", "INT8", "int8 ", "int4"]
    odd = st.sampled_from([None, "", 0, 2**64 - 1, -1.5, [], {}, b"int8"])

    @st.composite
    def infer(draw: st.DrawFn) -> wire.Message:
        batch = draw(mostly(st.integers(1, SPLIT_MAX_BATCH), st.sampled_from(
            [0, SPLIT_MAX_BATCH + 1, 3 * SPLIT_MAX_BATCH, protocol.MAX_BATCH + 1])))
        magnitude = draw(st.sampled_from([1.0] * 4 + [0.0, 1e-30, 1e30, 1e36, 3e38]))
        arrays = split_arrays(spec, batch, draw(st.integers(0, 3)), magnitude)
        header: dict[str, Any] = {protocol.SPLIT_KEY: identity}
        how = draw(st.sampled_from(["as-is"] * 4 + ["identity", "scale", "zero_point", "unquantised", "index",
                                                     "batch"]))
        if how == "identity":
            field = draw(st.sampled_from([*others, "drop", "extra", "whole"]))
            if field in others:
                header = {protocol.SPLIT_KEY: {**identity, field: draw(st.sampled_from(others[field]) | odd)}}
            elif field == "drop":
                drop = draw(st.sampled_from(list(identity)))
                header = {protocol.SPLIT_KEY: {key: value for key, value in identity.items() if key != drop}}
            elif field == "extra":
                key = draw(st.sampled_from(["head_nodes", "version", ""]))
                header = {protocol.SPLIT_KEY: {**identity, key: draw(junk_values)}}
            else:
                wrong = [{}, {"Split": identity}, {protocol.SPLIT_KEY: [*identity.values()]},
                         {protocol.SPLIT_KEY: spec.cut}]
                header = draw(st.sampled_from(wrong) | odd.map(lambda value: {protocol.SPLIT_KEY: value}))
        elif how in ("scale", "zero_point", "index") and batch:
            name = draw(st.sampled_from({"scale": scales, "zero_point": zero_points, "index": indices}[how]))
            edges = {"scale": SCALE_EDGES, "zero_point": ZERO_POINT_EDGES, "index": INDEX_EDGES}[how]
            value = np.array(arrays[name], copy=True)
            change = draw(st.sampled_from(["value"] * 4 + ["dtype", "shape"]))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if change == "value":
                    for _ in range(draw(st.integers(1, batch))):
                        edge = draw(st.sampled_from(edges))
                        if np.can_cast(np.min_scalar_type(edge), value.dtype) or value.dtype.kind == "f":
                            value.reshape(batch, -1)[draw(st.integers(0, batch - 1)), 0] = edge
                elif change == "dtype":
                    value = value.astype(draw(st.sampled_from(["<f8", "<f2", "<i8", "<i4", "|i1", "|b1"])))
                else:
                    value = draw(st.sampled_from([value[:, None], value[:0], value[0], np.tile(value, 2)]))
            arrays[name] = value
        elif how == "unquantised":  # a device of another encoding (or none), with this one's identity
            name = draw(st.sampled_from(floats))
            raw = split_tensors(spec, max(batch, 1), 0, magnitude)[name][:batch]
            dtype = draw(st.sampled_from(["<f4", "<f2", "<f8"]))
            with np.errstate(all="ignore"):  # 1e300 overflows float32 and float16 to infinity, as meant
                raw = raw.astype(dtype)
                if raw.size and draw(st.booleans()):
                    raw.reshape(-1)[draw(st.integers(0, raw.size - 1))] = draw(st.sampled_from(EDGE_FLOATS))
            arrays[name] = raw
            if draw(st.booleans()):
                arrays.pop(protocol.scale_name(name))
                arrays.pop(protocol.zero_point_name(name))
        elif how == "batch" and batch:  # one array of another batch than the others
            name = draw(st.sampled_from(list(arrays)))
            rows = draw(st.sampled_from([0, batch - 1, batch + 1, 2 * batch]))
            arrays[name] = np.resize(arrays[name], (rows, *arrays[name].shape[1:])).astype(arrays[name].dtype)
        return wire.Message(wire.MessageType.REQUEST, header, arrays)

    return infer()


def split_seeds(spec: Any) -> list[Request]:
    """A good batch of two with one field at an edge: a scale (0, the smallest float32, the
    largest allowed and the next, NaN, infinities), a zero point, int8 values that
    dequantise to float32's largest, an index (the table's ends, just past them, int64's
    ends), the batch (0, the limit, one past it) and the identity (each field another's)."""
    from coinfer.sdk.split import protocol

    codec = spec.codec
    good = split_arrays(spec, 2, 0)
    identity = {protocol.SPLIT_KEY: dict(spec.identity)}

    def frame(arrays: dict[str, np.ndarray], header: dict[str, Any] = identity) -> Request:
        return post(protocol.INFER_PATH, pack(wire.MessageType.REQUEST, header, arrays))

    seeds = []
    for array in codec.arrays:
        edges = (SCALE_EDGES if array.name.endswith(protocol.SCALE_SUFFIX) else ZERO_POINT_EDGES
                 if array.name.endswith(protocol.ZERO_POINT_SUFFIX) else [])
        seeds += [frame({**good, array.name: np.array([good[array.name][0], edge], array.dtype)})
                  for edge in edges]
    for tensor in spec.crossing:
        if tensor.numpy_dtype.kind == "f":  # every step at float32's end: -255 and +255 x the largest scale
            for low in (True, False):
                steps = np.full_like(good[tensor.name], -128 if low else 127)
                seeds.append(frame({**good, tensor.name: steps,
                                    protocol.scale_name(tensor.name): np.full(2, SPLIT_MAX_SCALE, np.float32),
                                    protocol.zero_point_name(tensor.name): np.full(2, 127 if low else -128,
                                                                                   np.int32)}))
    for batch in (0, SPLIT_MAX_BATCH, SPLIT_MAX_BATCH + 1):
        seeds.append(frame(split_arrays(spec, batch, 1)))
    for field in spec.identity:
        other = {**spec.identity, field: "0" * len(spec.identity[field])}
        seeds.append(frame(good, {protocol.SPLIT_KEY: other}))
    for tensor in spec.crossing:
        if tensor.numpy_dtype.kind in "iu":
            fits = [edge for edge in INDEX_EDGES if np.can_cast(np.min_scalar_type(edge), tensor.numpy_dtype)]
            seeds += [frame({**good, tensor.name: np.array([0, edge], tensor.numpy_dtype)}) for edge in fits]
    return seeds


def split_service(split: SimpleNamespace) -> Service:
    from coinfer.sdk.split import protocol

    messages = split_messages(split.spec)

    def bodies(template: str, ident: str) -> st.SearchStrategy[bytes]:
        return mostly(frame_bodies(messages, most=1), frame_bodies(messages, most=2) | junk_bodies)

    routes = [("GET", protocol.INFO_PATH), ("POST", protocol.INFER_PATH), ("POST", protocol.INFER_PATH)]
    return Service("the split tail service", split.url, routes, junk_ids, bodies,
                   seeds=split_seeds(split.spec))


def test_split_service_survives_random_requests(split: SimpleNamespace) -> None:
    from coinfer.device.split import SplitClient
    from coinfer.sdk.split import protocol

    client = SplitClient.create_from_bundle(split.device, split.url, TOKEN, max_batch=SPLIT_MAX_BATCH)
    inputs = np.random.default_rng(7).standard_normal((3, SPLIT_FEATURES)).astype(np.float32)
    logits = client.infer(inputs)["logits"]
    assert logits.shape == (3, SPLIT_CLASSES) and np.isfinite(logits).all()
    service = split_service(split)
    limits = split.spec.response_limits(SPLIT_MAX_BATCH)
    served = split.service.info()["requests"]

    def after_each(request: Request, answer: Answer) -> None:
        nonlocal served
        if answer.status == 200 and request.path == protocol.INFER_PATH:
            # an answered request is the graph's outputs for a batch within the limit
            served += 1
            reply = wire.decode(answer.body, limits)
            assert reply.type == wire.MessageType.RESPONSE and set(reply.arrays) == {"logits"}, request
            batch = reply.arrays["logits"].shape[0]
            assert reply.arrays["logits"].shape == (batch, SPLIT_CLASSES) and 1 <= batch <= SPLIT_MAX_BATCH
            assert isinstance(reply.header.get(protocol.TAIL_MS_KEY), float), reply.header
        assert split.service.info()["requests"] == served  # only what it answered ran the tail

    with fuzzing(service):
        run_fuzz(service, after_each)
        np.testing.assert_array_equal(client.infer(inputs)["logits"], logits)
        info = json.loads(call(split.url, "GET", protocol.INFO_PATH)[1])
        assert info["requests"] == served + 1 and info["max_batch"] == SPLIT_MAX_BATCH
        assert info["spec"] == split.spec.to_dict()


if __name__ == "__main__":  # pragma: no cover - run one service's fuzz by hand
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
