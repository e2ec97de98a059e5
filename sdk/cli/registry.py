"""Which sub-commands exist, where they live, and which issue tracks the missing ones.

A sub-command module provides ``add_arguments(parser)`` and ``run(args) -> int``. Keeping
the table here (strings, not imports) lets ``coinfer --help`` list everything without
importing TensorFlow, PyTorch or any tier.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CommandSpec:
    """One ``coinfer <name>`` sub-command."""

    name: str
    summary: str
    module: str | None = None
    tracking_issue: int | None = None

    @property
    def implemented(self) -> bool:
        return self.module is not None


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("gate", "PacketGame: gate video packets before decoding", module="coinfer.edge.gate.cli"),
    CommandSpec("infi", "InFi: learnable skip/reuse input filters", module="coinfer.edge.infi.cli"),
    CommandSpec("stip", "STIP: three-party secure transformer inference", module="coinfer.cloud.stip.cli"),
    CommandSpec("mlink", "MLink: link black-box models, run many under a budget",
                module="coinfer.edge.mlink.cli"),
    CommandSpec("split", "choose the device/edge DNN cut and compress the tensor across it"),
    CommandSpec("evolve", "NestEvo: edge-assisted co-evolution of device models"),
    CommandSpec("data", "generate deterministic workloads (scenes, speech, traces)",
                module="coinfer.sdk.data.cli"),
    CommandSpec("export", "export Keras / PyTorch models to TFLite / ONNX with parity checks",
                module="coinfer.converters.cli"),
    CommandSpec("edge", "run the edge gateway daemon", module="coinfer.edge.cli"),
    CommandSpec("cloud", "serve models on the cloud tier", module="coinfer.cloud.cli"),
    CommandSpec("demo", "run the end-to-end demo on embedded defaults",
                module="coinfer.sdk.cli.demo"),
)

#: Exit status of a sub-command that is registered but not built yet (EX_UNAVAILABLE).
EXIT_NOT_IMPLEMENTED = 69
