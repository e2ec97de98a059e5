"""The catalogue of ``coinfer`` commands: what exists, and which distribution provides it.

Each distribution registers the module behind each of its commands as an entry point of
the group ``coinfer.commands``, named ``GROUP.ACTION`` (``gate.run =
coinfer.edge.cli.gate_run``) or ``GROUP`` for a command without actions (``demo``). The sdk
knows only names, summaries and distributions, never a tier's modules: ``coinfer --help``
lists every command without importing anything, and a command whose distribution is not
installed says what to install.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

from dataclasses import dataclass

SDK = "coinfer-sdk"
DEVICE = "coinfer-device"
EDGE = "coinfer-edge"
CLOUD = "coinfer-cloud"
CONVERTERS = "coinfer-converters"
BENCH = "coinfer-bench"

#: The extra of the meta-distribution ``coinfer`` that brings each distribution.
EXTRAS = {SDK: "", DEVICE: "device", EDGE: "edge", CLOUD: "cloud", CONVERTERS: "convert", BENCH: "bench"}
#: The entry-point group every distribution registers its commands in.
ENTRY_POINT_GROUP = "coinfer.commands"
#: Exit status of a command that is not built yet, or whose distribution is missing (EX_UNAVAILABLE).
EXIT_UNAVAILABLE = 69


@dataclass(frozen=True)
class Action:
    """``coinfer GROUP NAME``, provided by ``distribution``."""

    name: str
    summary: str
    distribution: str


@dataclass(frozen=True)
class Group:
    """``coinfer NAME``: a capability's actions, or one command (``distribution`` set)."""

    name: str
    summary: str
    actions: tuple[Action, ...] = ()
    distribution: str | None = None
    tracking_issue: int | None = None

    @property
    def implemented(self) -> bool:
        return bool(self.actions) or self.distribution is not None

    def action(self, name: str) -> Action | None:
        return next((action for action in self.actions if action.name == name), None)

    def entry_point(self, action: str | None = None) -> str:
        return self.name if action is None else f"{self.name}.{action}"


GROUPS: tuple[Group, ...] = (
    Group("gate", "PacketGame: gate video packets before decoding", (
        Action("run", "gate many streams under a decode budget, decode in workers, run the detectors", EDGE),
        Action("train", "train the contextual predictor on your videos or a recorded scene set", EDGE),
        Action("serve", "the edge gateway: ingest gated camera uploads, decode and infer", EDGE),
        Action("bench", "PacketGame against its baselines on generated scenes", BENCH),
    )),
    Group("infi", "InFi: learnable skip/reuse input filters", (
        Action("train", "train a skip or reuse filter on (input, model output) records", EDGE),
        Action("export", "export a trained filter to TFLite (float32, float16, int8) for devices", EDGE),
        Action("run", "run an exported filter over records with LiteRT and score its decisions", EDGE),
        Action("analyze", "the filterability verdict of a redundancy measurement and whether a filter "
                          "pays off", EDGE),
        Action("serve", "the edge detection service: cameras post the frames their skip filter kept", EDGE),
        Action("bench", "InFi filters against the optimum and the baselines on real models", BENCH),
    )),
    Group("stip", "STIP: three-party secure transformer inference", (
        Action("publish", "key and transform a model; write server and user bundles", CLOUD),
        Action("verify", "check F'(x pi) pi_c^T == F(x) on random inputs, in process", CLOUD),
        Action("audit", "distance correlation, known-plaintext attack, text without keys", CLOUD),
        Action("serve", "the STIP model server (optionally on Ray Serve)", CLOUD),
        Action("chat", "generate text through a STIP server as the data owner", DEVICE),
        Action("bench", "STIP against plain cloud inference, in the same run", BENCH),
    )),
    Group("mlink", "MLink: link black-box models, run many under a budget", (
        Action("record", "run the model zoo on every step of your videos or a scene set", EDGE),
        Action("train", "train a link between every pair of models, and the ensembles, on recorded "
                        "outputs", EDGE),
        Action("plan", "the models to run under a budget and the mean output accuracy expected", EDGE),
        Action("run", "serve steps under a budget: run the planned models, predict the rest", EDGE),
        Action("federate", "train the links with other edges through the cloud aggregator (FedAvg)", EDGE),
        Action("serve", "the federated aggregation service for link graphs", CLOUD),
        Action("bench", "MLink against standalone, random, Reducto-style and the optimum on real models",
               BENCH),
    )),
    Group("split", "choose the device/edge DNN cut and compress the tensor across it (more in #19)", (
        Action("profile", "time both halves of every prefix cut here (heads on the device, tails on the "
                          "edge)", DEVICE),
        Action("plan", "the cut and encoding of least latency for a link, from a device's and an edge's "
                       "profiles", EDGE),
        Action("train", "a FrankenSplit bottleneck for EfficientNet-Lite0 (encoder, entropy tables, "
                        "decoder)", BENCH),
        Action("export", "cut an ONNX model and write its device and edge halves", EDGE),
        Action("serve", "the edge half: decode the crossing tensors, run the tail", EDGE),
        Action("run", "run the head here and the tail on the edge for a batch of inputs", DEVICE),
        Action("bench", "the planner on a quota-limited device over a tbf-shaped link, and bottlenecks "
                        "against JPEG and WebP", BENCH),
    ), tracking_issue=19),
    Group("evolve", "NestEvo: edge-assisted co-evolution of device models", (
        Action("serve", "the edge evolution service: label device uploads, evolve and publish their models",
               EDGE),
        Action("run", "one round offline on recorded frames: drift decides device-only evolution or "
                      "co-evolution with the global model; publish the new models", EDGE),
        Action("device", "serve a device model on video or frames, upload to the edge, install evolved "
                         "models", DEVICE),
        Action("bench", "NestEvo against baselines A1-A4 on drifting cameras, adaptive compression, and the "
                        "knapsack scheduler against serial and random", BENCH),
    ), tracking_issue=20),
    Group("data", "generate deterministic workloads (scenes, corpus, speech, drift)", (
        Action("scenes", "multi-camera videos with real detector results and generative truth", BENCH),
        Action("corpus", "a text corpus of messages labelled by a real zero-shot classifier", BENCH),
        Action("speech", "speech and noise clips labelled by the real Silero VAD", BENCH),
        Action("drift", "drifting camera domains (campus, rural, night, real footage), labelled", BENCH),
    )),
    Group("export", "export Keras / PyTorch models to TFLite / ONNX with parity checks", (
        Action("keras", "Keras (.keras) -> TFLite", CONVERTERS),
        Action("torch", "PyTorch nn.Module -> ONNX or TFLite", CONVERTERS),
        Action("verify", "verify artifacts' manifests and file hashes", CONVERTERS),
    )),
    Group("edge", "the edge products", (
        Action("gateway", "the edge gateway daemon: live streams, camera uploads, filters, MLink, split and "
                          "evolve in one process tree, from one config file", EDGE),
    )),
    Group("cloud", "the cloud products", (
        Action("serve", "the cloud services (STIP model server, MLink aggregation) in one process from one "
                        "config file, or on Ray Serve", CLOUD),
    )),
    Group("demo", "the tour: every capability end to end on embedded defaults", distribution=BENCH),
)

def group(name: str) -> Group | None:
    return next((group for group in GROUPS if group.name == name), None)
