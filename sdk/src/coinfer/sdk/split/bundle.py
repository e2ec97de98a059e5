"""A split exported for deployment: the device's head and the edge's tail as two artifacts.

Why two artifacts: the device and the edge each receive only their half (a phone has no use
for the tail's weights, and the edge none for the head's), yet the two must be of one
export: the same graph (its :func:`~coinfer.sdk.split.profile.graph_fingerprint`), the same
cut and the same encoding, or the tail would read the head's tensors as something else.
:func:`export_split` writes ``OUT/device`` (kind ``head``) and ``OUT/edge`` (kind ``tail``),
both of capability ``split``, in one atomic step. Each holds ``split.json``, the same
:class:`SplitSpec` on both sides (graph inputs, crossing tensors and graph outputs with
their per-sample shapes and dtypes, the encoding, the fingerprint and the cut id), plus its
model: ``head.onnx`` (graph inputs -> the crossing tensors the head makes) and ``tail.onnx``
(crossing tensors -> the graph outputs that do not cross).

A device side may carry its head as ``head.tflite`` instead (exactly one of the two):
:func:`save_head` writes a device side with another head model and the very same
``split.json``, so the edge takes it as the same export (the TFLite converter of
``coinfer-converters``, ``coinfer.converters.split_heads``, uses it). Its manifest's
``metadata["head_tensors"]`` names the TFLite model's tensors: ``{"inputs": {tflite name:
graph input}, "outputs": {tflite name: crossing tensor}}``.

With the ``entropy`` encoding (a trained bottleneck's integer latent crossing, range-coded)
both sides also hold ``tables.npz``, the bottleneck's
:class:`~coinfer.sdk.split.entropy.EntropyTables`: listed and hashed in each manifest like
the models, and named in ``split.json`` (and in the identity a request carries) by their
fingerprint, so that sides with other tables, or a tables file that is not the one the spec
names, are refused at load rather than decoded into another latent.

An empty side holds ``split.json`` alone (and ``tables.npz`` with ``entropy``): at the
all-edge cut (no head node) the device sends the graph inputs, encoded; at the all-device
cut (every output crosses) the device runs the whole graph and sends its outputs, and the
edge decodes them and answers them back, as it answers the tail's outputs at any other cut.

:func:`load_split` refuses two sides of different exports; :func:`load_side` with a
``fingerprint`` refuses a side of another graph. Only numpy is imported with this module;
``onnx`` when a split is exported. Example on ``y = relu(x) + sigmoid(x)``:

>>> import tempfile
>>> from onnx import TensorProto, helper
>>> from coinfer.sdk.split.graph import SplitGraph
>>> nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
...          helper.make_node("Add", ["a", "b"], ["y"])]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4])
>>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")])))
>>> work = tempfile.TemporaryDirectory()
>>> device, edge = export_split(graph, graph.cut_after("a"), f"{work.name}/split", "int8")
>>> sorted(device.artifact.manifest.files), sorted(edge.artifact.manifest.files)
(['head.onnx', 'split.json'], ['split.json', 'tail.onnx'])
>>> [tensor.describe() for tensor in edge.spec.crossing], edge.spec.codec.sample_bytes
(["'x' float32[?, 4]", "'a' float32[?, 4]"], 24)
>>> device, edge = load_split(f"{work.name}/split/device", f"{work.name}/split/edge")
>>> _ = export_split(graph, graph.cuts()[0], f"{work.name}/other", "int8")
>>> load_split(f"{work.name}/split/device", f"{work.name}/other/edge")
Traceback (most recent call last):
    ...
coinfer.sdk.split.bundle.SplitBundleError: .../device and .../edge are not two sides of one export: ...

A bottleneck's graph rounds its latent; cut after it, the latent travels entropy-coded:

>>> import numpy as np
>>> from coinfer.sdk.split.entropy import EntropyTables
>>> nodes = [helper.make_node("Round", ["x"], ["latent"]), helper.make_node("Relu", ["latent"], ["y"])]
>>> value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2, 3, 3])
>>> graph = SplitGraph(helper.make_model(helper.make_graph(nodes, "b", [value("x")], [value("y")])))
>>> tables = EntropyTables.from_probabilities([np.ones(9), np.ones(5)], lows=[-4, -2])
>>> device, edge = export_split(graph, graph.cut_after("latent"), f"{work.name}/entropy", "entropy",
...                             tables=tables)
>>> sorted(edge.artifact.manifest.files), edge.spec.tables is not None, edge.spec.identity["tables"]
(['split.json', 'tables.npz', 'tail.onnx'], True, '...')
>>> other = EntropyTables.from_probabilities([np.ones(9), np.ones(3)], lows=[-4, -1])
>>> _ = export_split(graph, graph.cut_after("latent"), f"{work.name}/other-tables", "entropy", tables=other)
>>> load_split(f"{work.name}/entropy/device", f"{work.name}/other-tables/edge")
Traceback (most recent call last):
    ...
coinfer.sdk.split.bundle.SplitBundleError: .../device and .../edge are not two sides ...entropy tables ...
>>> work.cleanup()
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from coinfer.sdk.artifact import Artifact, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import CoinferError, one_line
from coinfer.sdk.fsutil import atomic_directory
from coinfer.sdk.split import protocol
from coinfer.sdk.split.entropy import EntropyCodingError, EntropyTables
from coinfer.sdk.split.graph import Cut, SplitGraph
from coinfer.sdk.split.profile import graph_fingerprint
from coinfer.sdk.split.tensors import (
    ENCODINGS,
    ENTROPY,
    TensorCodec,
    TensorCodecError,
    check_specs,
    sample_nbytes,
)
from coinfer.sdk.tensor import TensorSpec
from coinfer.sdk.wire import WireLimits

CAPABILITY = "split"
HEAD_KIND, TAIL_KIND = "head", "tail"
#: Where :func:`export_split` puts the two sides inside its output directory.
DEVICE_DIR, EDGE_DIR = "device", "edge"
SPLIT_FILE, HEAD_FILE, TAIL_FILE = "split.json", "head.onnx", "tail.onnx"
#: The head as TFLite, in place of ``head.onnx`` (:func:`save_head`); a device side holds one of them.
HEAD_TFLITE_FILE = "head.tflite"
HEAD_FILES = (HEAD_FILE, HEAD_TFLITE_FILE)
#: The entropy encoding's tables (:class:`~coinfer.sdk.split.entropy.EntropyTables`), on both sides.
TABLES_FILE = "tables.npz"
#: The device manifest's metadata key naming a TFLite head's tensors.
HEAD_TENSORS_KEY = "head_tensors"
#: Bumped when ``split.json`` changes incompatibly.
SPEC_VERSION = 1
#: ``split.json`` lists at most 3 x 256 tensors: far below this.
MAX_SPEC_BYTES = 1 << 20
_HEX64, _HEX16, _HEX8 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{16}"), re.compile(r"[0-9a-f]{8}")


class SplitBundleError(CoinferError):
    """A split that cannot be exported, or a side that is unreadable or of another export."""


@dataclass(frozen=True)
class SplitSpec:
    """What both sides of an export agree on; tensor shapes have the batch axis first
    (``None`` unless the graph fixes it).

    ``fingerprint`` is the graph's, ``cut`` a 16-hex id of the head's nodes and the crossing
    tensors, ``head_nodes`` how many nodes the device runs. ``tables`` are the entropy tables
    the ``entropy`` encoding needs (and no other encoding takes); two specs are equal only
    with tables of the same fingerprint (``tables_fingerprint``, 8 hex digits, ``None``
    without tables), which ``split.json`` records.
    """

    fingerprint: str
    cut: str
    head_nodes: int
    encoding: str
    inputs: tuple[TensorSpec, ...]
    crossing: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tables: EntropyTables | None = field(default=None, compare=False, repr=False)
    tables_fingerprint: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.tables is not None:
            if not isinstance(self.tables, EntropyTables):
                raise SplitBundleError(f"tables must be EntropyTables, got {type(self.tables).__name__}")
            object.__setattr__(self, "tables_fingerprint", f"{self.tables.fingerprint:08x}")
        if not (isinstance(self.fingerprint, str) and _HEX64.fullmatch(self.fingerprint)):
            raise SplitBundleError(f"fingerprint must be 64 hex digits, got {self.fingerprint!r}")
        if not (isinstance(self.cut, str) and _HEX16.fullmatch(self.cut)):
            raise SplitBundleError(f"cut must be 16 hex digits, got {self.cut!r}")
        if not (type(self.head_nodes) is int and self.head_nodes >= 0):
            raise SplitBundleError(f"head_nodes must be an int >= 0, got {self.head_nodes!r}")
        try:
            for what in ("inputs", "crossing", "outputs"):
                check_specs(getattr(self, what), what)
            _ = self.codec  # building the codec checks the encoding and the int8 arrays' names
        except TensorCodecError as error:
            raise SplitBundleError(str(error)) from error
        batches = {tensors[0].shape[0] for tensors in (self.inputs, self.crossing, self.outputs)}
        if len(batches) != 1:
            raise SplitBundleError(f"the inputs, crossing tensors and outputs disagree on the batch axis: "
                                   f"{sorted(map(str, batches))}")

    @classmethod
    def of(cls, graph: SplitGraph, cut: Cut, encoding: str, *,
           tables: EntropyTables | None = None) -> SplitSpec:
        """The spec of ``cut`` of ``graph`` sent as ``encoding`` (``tables`` for ``entropy``);
        refused unless every tensor has the batch axis first and fixed dimensions after it."""
        if encoding not in ENCODINGS:
            raise SplitBundleError(f"unknown tensor encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
        if graph.cut_of(cut.head).tensors != cut.tensors:
            raise SplitBundleError(f"the cut crossing {list(cut.tensors)[:4]} is not a cut of this graph")
        fingerprint = graph_fingerprint(graph)
        head = ",".join(str(index) for index in sorted(cut.head))
        cut_id = hashlib.sha256("\0".join([fingerprint, head, *cut.tensors]).encode()).hexdigest()[:16]
        body = graph.model.graph
        values = (*body.value_info, *body.input, *body.output)
        types = {value.name: value.type.tensor_type for value in values}
        return cls(fingerprint, cut_id, len(cut.head), encoding,
                   tuple(_tensor_spec(types, name) for name in graph.inputs),
                   tuple(_tensor_spec(types, name) for name in cut.tensors),
                   tuple(_tensor_spec(types, name) for name in graph.outputs), tables)

    @cached_property
    def codec(self) -> TensorCodec:
        """How the crossing tensors travel."""
        return TensorCodec(self.crossing, self.encoding, tables=self.tables)

    @property
    def identity(self) -> dict[str, str]:
        """What a request names so that the edge refuses the head of another export (and, with
        ``entropy``, a head coding with other tables)."""
        identity = {"fingerprint": self.fingerprint, "cut": self.cut, "encoding": self.encoding}
        if self.tables_fingerprint is not None:
            identity["tables"] = self.tables_fingerprint
        return identity

    @property
    def runs_head(self) -> bool:
        return self.head_nodes > 0

    @property
    def runs_tail(self) -> bool:
        """Whether some graph output is left for the tail to make."""
        crossing = {tensor.name for tensor in self.crossing}
        return any(tensor.name not in crossing for tensor in self.outputs)

    def request_limits(self, max_batch: int) -> WireLimits:
        """Wire limits of a request of at most ``max_batch`` samples."""
        return self.codec.limits(max_batch)

    def response_limits(self, max_batch: int) -> WireLimits:
        """Wire limits of the answer to such a request: the graph outputs in their dtypes."""
        return protocol.frame_limits([(tensor.name, len(tensor.shape)) for tensor in self.outputs],
                                     max_batch * sample_nbytes(self.outputs))

    def to_dict(self) -> dict[str, Any]:
        """The spec as ``split.json`` holds it (``tables`` only for ``entropy``)."""
        return {"version": SPEC_VERSION, **self.identity, "head_nodes": self.head_nodes,
                "inputs": [tensor.to_dict() for tensor in self.inputs],
                "crossing": [tensor.to_dict() for tensor in self.crossing],
                "outputs": [tensor.to_dict() for tensor in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any, *, tables: EntropyTables | None = None) -> SplitSpec:
        """The spec ``to_dict`` wrote, with the ``tables`` it names (those of an ``entropy``
        spec: their fingerprint must be the one recorded); anything else is a
        :class:`SplitBundleError`."""
        keys = {"version", "fingerprint", "cut", "encoding", "head_nodes", "inputs", "crossing", "outputs"}
        if isinstance(data, dict) and "tables" in data:
            keys.add("tables")  # only an entropy spec writes it
        if not isinstance(data, dict) or set(data) != keys:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise SplitBundleError(f"a split spec is an object with the keys {sorted(keys)}, got {got}")
        if type(data["version"]) is not int or data["version"] != SPEC_VERSION:
            raise SplitBundleError(f"split spec version {data['version']!r}; this coinfer reads "
                                   f"{SPEC_VERSION}")
        tensors = {}
        for what in ("inputs", "crossing", "outputs"):
            if not isinstance(data[what], list):
                raise SplitBundleError(f"{what} must be a list of tensors")
            try:
                tensors[what] = tuple(TensorSpec.from_dict(item) for item in data[what])
            except (CoinferError, AttributeError) as error:  # a list item that is no object
                raise SplitBundleError(f"{what}: {one_line(error)}") from error
        recorded = data.get("tables")
        if (data["encoding"] == ENTROPY) != ("tables" in data):
            raise SplitBundleError(f"a split spec names entropy tables if and only if its encoding is "
                                   f"{ENTROPY!r}; this one is {str(data['encoding'])[:16]!r}")
        if recorded is not None and not (isinstance(recorded, str) and _HEX8.fullmatch(recorded)):
            raise SplitBundleError(f"tables must be the tables' fingerprint, 8 hex digits, got {recorded!r}")
        if recorded is not None and tables is not None and recorded != f"{tables.fingerprint:08x}":
            raise SplitBundleError(f"the split spec names entropy tables {recorded}, these are "
                                   f"{tables.fingerprint:08x}: not the tables of this export")
        if recorded is not None and tables is None:
            raise SplitBundleError(f"the split spec names entropy tables {recorded}; pass them to read it")
        return cls(data["fingerprint"], data["cut"], data["head_nodes"], data["encoding"], **tensors,
                   tables=tables if recorded is not None else None)


@dataclass(frozen=True)
class SplitSide:
    """One verified side of an export: the artifact and its spec."""

    artifact: Artifact
    spec: SplitSpec

    @property
    def kind(self) -> str:
        """``head`` (the device's) or ``tail`` (the edge's)."""
        return self.artifact.manifest.kind

    @property
    def model(self) -> Path | None:
        """This side's model (``head.onnx`` or ``head.tflite``, ``tail.onnx``); ``None`` where the
        cut leaves the side no node to run."""
        names = HEAD_FILES if self.kind == HEAD_KIND else (TAIL_FILE,)
        present = [name for name in names if name in self.artifact.manifest.files]
        return self.artifact.file(present[0]) if present else None

    @property
    def head_tensors(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """A TFLite head's (inputs, outputs): its tensor names -> the graph's; ``None`` for an
        ONNX head, whose tensors carry the graph's names."""
        if self.kind != HEAD_KIND or HEAD_TFLITE_FILE not in self.artifact.manifest.files:
            return None
        names = self.artifact.manifest.metadata[HEAD_TENSORS_KEY]  # checked by load_side
        return dict(names["inputs"]), dict(names["outputs"])


def export_split(graph: SplitGraph, cut: Cut, out_dir: str | os.PathLike, encoding: str, *,
                 tables: EntropyTables | None = None, overwrite: bool = False) -> tuple[SplitSide, SplitSide]:
    """Write ``OUT/device`` and ``OUT/edge`` for ``cut`` of ``graph`` with the crossing tensors
    sent as ``encoding``; returns them loaded (device, edge). ``OUT`` appears whole or not
    at all; an existing ``OUT`` is replaced only with ``overwrite``.

    ``entropy`` takes the bottleneck's ``tables`` (one float latent ``(batch, C, H, W)`` must
    cross, ``C`` the tables' channels: cut a bottleneck's graph with
    ``graph.cut_after(latent)``); both sides get them as ``tables.npz``."""
    spec = SplitSpec.of(graph, cut, encoding, tables=tables)
    head, tail = graph.extract(cut)
    text = (json.dumps(spec.to_dict(), indent=1, sort_keys=True) + "\n").encode("utf-8")
    sides = ((DEVICE_DIR, HEAD_KIND, HEAD_FILE, head, spec.inputs, spec.crossing),
             (EDGE_DIR, TAIL_KIND, TAIL_FILE, tail, spec.crossing, spec.outputs))
    out = Path(out_dir)
    with atomic_directory(out, overwrite=overwrite) as staging:
        for folder, kind, model_file, model, inputs, outputs in sides:
            files = {SPLIT_FILE: text, **_tables_files(spec)}
            if model is not None:
                files[model_file] = model.SerializeToString()
            manifest = Manifest(CAPABILITY, kind, inputs=list(inputs), outputs=list(outputs),
                                metadata={**spec.identity, "head_nodes": spec.head_nodes})
            save_artifact(staging / folder, manifest, files)
    return load_split(out / DEVICE_DIR, out / EDGE_DIR)


def save_head(head: SplitSide, out_dir: str | os.PathLike, model_file: str, model: bytes | os.PathLike, *,
              metadata: dict[str, Any] | None = None, overwrite: bool = False) -> SplitSide:
    """Write a device side at ``out_dir`` like ``head`` but with ``model`` (bytes or a file) as
    its head ``model_file`` (``head.onnx`` or ``head.tflite``); returns it loaded.

    ``split.json`` is copied byte for byte, so the edge side of ``head``'s export serves the
    new one too. ``metadata`` joins the manifest's (a TFLite head needs ``head_tensors``).
    """
    if head.kind != HEAD_KIND:
        raise SplitBundleError(f"{head.artifact.path}: a head is saved from a device side, not a {head.kind}")
    if model_file not in HEAD_FILES:
        raise SplitBundleError(f"a head model file is one of {', '.join(HEAD_FILES)}, not {model_file!r}")
    if not head.spec.runs_head:
        raise SplitBundleError(f"{head.artifact.path}: the cut leaves the device no node to run, so no head "
                               "to replace")
    files: dict[str, bytes | os.PathLike] = {SPLIT_FILE: head.artifact.file(SPLIT_FILE).read_bytes(),
                                             model_file: model}
    if TABLES_FILE in head.artifact.manifest.files:  # the entropy encoding's tables, byte for byte
        files[TABLES_FILE] = head.artifact.file(TABLES_FILE).read_bytes()
    spec = head.spec
    manifest = Manifest(CAPABILITY, HEAD_KIND, inputs=list(spec.inputs), outputs=list(spec.crossing),
                        metadata={**(metadata or {}), **spec.identity, "head_nodes": spec.head_nodes})
    save_artifact(out_dir, manifest, files, overwrite=overwrite)
    return load_side(out_dir, HEAD_KIND, fingerprint=spec.fingerprint)


def load_side(path: str | os.PathLike, kind: str, *, fingerprint: str | None = None) -> SplitSide:
    """Read and verify one side (``kind`` ``head`` or ``tail``); with ``fingerprint``, refuse
    a side of any other graph."""
    if kind not in (HEAD_KIND, TAIL_KIND):
        raise SplitBundleError(f"a split side is a {HEAD_KIND!r} or a {TAIL_KIND!r}, not {kind!r}")
    artifact = load_artifact(path, capability=CAPABILITY, kind=kind)
    where = artifact.file(SPLIT_FILE)
    if where.stat().st_size > MAX_SPEC_BYTES:
        raise SplitBundleError(f"{where}: over the {MAX_SPEC_BYTES}-byte limit of a split spec")
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # not JSON
        raise SplitBundleError(f"{where}: not a split spec: {one_line(error)}") from error
    tables = _load_tables(artifact, data)
    try:
        spec = SplitSpec.from_dict(data, tables=tables)
    except SplitBundleError as error:
        raise SplitBundleError(f"{where}: not a split spec: {one_line(error)}") from error
    names = HEAD_FILES if kind == HEAD_KIND else (TAIL_FILE,)
    present = [name for name in names if name in artifact.manifest.files]
    needed = spec.runs_head if kind == HEAD_KIND else spec.runs_tail
    if len(present) > 1:
        raise SplitBundleError(f"{artifact.path}: holds both {' and '.join(present)}; a device side holds "
                               "one head")
    if needed != bool(present):
        problem = "lacks" if needed else "holds a model although the cut leaves this side nothing to run:"
        raise SplitBundleError(f"{artifact.path}: {problem} {(present or [' or '.join(names)])[0]}")
    if HEAD_TFLITE_FILE in present:
        _check_head_tensors(artifact, spec)
    if fingerprint is not None and spec.fingerprint != fingerprint:
        raise SplitBundleError(f"{artifact.path}: a split of another graph (sha256 "
                               f"{spec.fingerprint[:12]}..., expected {fingerprint[:12]}...)")
    return SplitSide(artifact, spec)


def load_split(device: str | os.PathLike, edge: str | os.PathLike) -> tuple[SplitSide, SplitSide]:
    """Both sides of one export, refused unless they are of the same graph, cut and encoding."""
    head, tail = load_side(device, HEAD_KIND), load_side(edge, TAIL_KIND)
    if head.spec != tail.spec:
        mine, theirs = head.spec, tail.spec
        raise SplitBundleError(
            f"{head.artifact.path} and {tail.artifact.path} are not two sides of one export: the device "
            f"holds cut {mine.cut} of graph {mine.fingerprint[:12]}... in {_encoding(mine)}, the edge cut "
            f"{theirs.cut} of graph {theirs.fingerprint[:12]}... in {_encoding(theirs)}; deploy both sides "
            "of one export_split")
    return head, tail


def _encoding(spec: SplitSpec) -> str:
    """The encoding, with the tables' fingerprint for ``entropy``: what two sides must share."""
    tables = f" with entropy tables {spec.tables_fingerprint}" if spec.tables_fingerprint else ""
    return spec.encoding + tables


def _tables_files(spec: SplitSpec) -> dict[str, bytes]:
    """``tables.npz`` of an entropy spec's tables (integer arrays only), else nothing."""
    if spec.tables is None:
        return {}
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **spec.tables.to_arrays())  # type: ignore[arg-type]  # as coinfer.sdk.npz writes them
    return {TABLES_FILE: buffer.getvalue()}


def _load_tables(artifact: Artifact, data: Any) -> EntropyTables | None:
    """The side's ``tables.npz`` (its hash already checked) if its spec is ``entropy``, refused
    unless they are the tables ``split.json`` names; a side of another encoding holds none."""
    if not isinstance(data, dict):
        return None  # not a spec: SplitSpec.from_dict says so
    encoding = data.get("encoding")
    held = TABLES_FILE in artifact.manifest.files
    if (encoding == ENTROPY) != held:
        problem = "lacks" if encoding == ENTROPY else "holds"
        raise SplitBundleError(f"{artifact.path}: {problem} {TABLES_FILE}, entropy tables, and its encoding "
                               f"is {str(encoding)[:16]!r}")
    if not held:
        return None
    try:
        tables = EntropyTables.load(artifact.file(TABLES_FILE))
    except EntropyCodingError as error:
        raise SplitBundleError(f"{artifact.path}: {TABLES_FILE}: {one_line(error)}") from error
    recorded = data.get("tables")
    if isinstance(recorded, str) and _HEX8.fullmatch(recorded) and recorded != f"{tables.fingerprint:08x}":
        raise SplitBundleError(f"{artifact.path}: {TABLES_FILE} holds entropy tables "
                               f"{tables.fingerprint:08x}, {SPLIT_FILE} names {recorded[:8]}: not the tables "
                               "of this export")
    return tables


def _check_head_tensors(artifact: Artifact, spec: SplitSpec) -> None:
    """A TFLite head's manifest maps its tensors to graph inputs and to every tensor the head makes."""
    names = artifact.manifest.metadata.get(HEAD_TENSORS_KEY)
    where = f"{artifact.path}: metadata {HEAD_TENSORS_KEY!r} of {HEAD_TFLITE_FILE}"

    def mapping(key: str) -> dict[str, str]:
        value = names.get(key) if isinstance(names, dict) else None
        if not (isinstance(value, dict) and all(isinstance(item, str) for item in (*value, *value.values()))):
            raise SplitBundleError(f"{where} must map {key!r}: {{model tensor: graph tensor}}")
        return value

    inputs, outputs = mapping("inputs"), mapping("outputs")
    graph_inputs = [tensor.name for tensor in spec.inputs]
    made = sorted({tensor.name for tensor in spec.crossing} - set(graph_inputs))
    if len(set(inputs.values())) != len(inputs) or not set(inputs.values()) <= set(graph_inputs):
        raise SplitBundleError(f"{where}: inputs {sorted(inputs.values())[:4]} are not graph inputs "
                               f"{graph_inputs[:4]}")
    if sorted(outputs.values()) != made:
        raise SplitBundleError(f"{where}: outputs {sorted(outputs.values())[:4]} are not the crossing "
                               f"tensors the head makes {made[:4]}")


def _tensor_spec(types: dict[str, Any], name: str) -> TensorSpec:
    """``name``'s shape (batch axis first: ``None`` when symbolic) and dtype from shape inference."""
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor_type = types.get(name)
    if tensor_type is None or not tensor_type.HasField("shape") or not tensor_type.shape.dim:
        raise SplitBundleError(f"tensor {name!r} has no inferred shape with a batch axis; fix the input "
                               "shapes (SplitGraph.load(path, input_shapes=...))")
    first, *rest = tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in rest):
        raise SplitBundleError(f"tensor {name!r} has a symbolic dimension past the batch axis; fix the input "
                               "shapes (SplitGraph.load(path, input_shapes=...))")
    batch = int(first.dim_value) if first.HasField("dim_value") else None
    try:
        dtype = str(tensor_dtype_to_np_dtype(tensor_type.elem_type))
    except KeyError:
        raise SplitBundleError(f"tensor {name!r} has ONNX element type {tensor_type.elem_type}, which numpy "
                               "does not have") from None
    return TensorSpec(name, (batch, *(int(dim.dim_value) for dim in rest)), dtype)


__all__ = ["CAPABILITY", "DEVICE_DIR", "EDGE_DIR", "HEAD_FILE", "HEAD_FILES", "HEAD_KIND", "HEAD_TENSORS_KEY",
           "HEAD_TFLITE_FILE", "SPLIT_FILE", "TABLES_FILE", "TAIL_FILE", "TAIL_KIND", "SplitBundleError",
           "SplitSide", "SplitSpec", "export_split", "load_side", "load_split", "save_head"]
