"""What every stage of ``coinfer demo`` shares: the work folder, one scene set, results, plots.

Why: the tour runs many capabilities one after another on one machine in a few minutes, so
what several stages need is made once (the generated cameras, the ImageNet network) and each
stage reports the same way: its headline metrics, the checks that say whether it did what it
shows, and its plots as PNG bytes for the HTML report.

>>> result = StageResult({"cost_fraction": 0.42, "packets": 240},
...                      checks={"cost under the budget": True, "no corrupt frame": False})
>>> result.ok, result.failed
(False, ['no corrupt frame'])
>>> result.entry()["error"]
'failed checks: no corrupt frame'
>>> StageResult.from_error(ValueError("bad input\\nsecond line")).entry()
{'ok': False, 'error': 'ValueError: bad input'}
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Metrics = dict[str, Any]
Say = Callable[[str], None]

#: The scene set every stage that watches cameras shares: a few short busy cameras, each clip
#: spread over a whole day (so night frames too: a skip filter trained on three cameras learns
#: from them what a few daytime seconds cannot teach it), with audio (MLink's speech model
#: listens), faces and cats counted by the real detectors.
SCENE_CAMERAS = 4
SCENE_SECONDS = 8.0
SCENE_TASKS = ("faces", "cats")


@dataclass(frozen=True)
class Plot:
    """One figure of a stage: its title and the PNG bytes."""

    title: str
    png: bytes


@dataclass
class StageResult:
    """A stage's headline ``metrics``, its ``checks`` (name -> passed) and its ``plots``."""

    metrics: Metrics = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_error(cls, error: BaseException) -> StageResult:
        """The result of a stage that raised: its first line, with the exception's type."""
        lines = str(error).strip().splitlines()
        return cls(error=f"{type(error).__name__}: {lines[0] if lines else 'no message'}")

    @property
    def failed(self) -> list[str]:
        """The checks that did not pass."""
        return [name for name, passed in self.checks.items() if not passed]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def entry(self) -> Metrics:
        """The stage's entry of the JSON ``stages`` object."""
        entry: Metrics = {**self.metrics, "ok": self.ok}
        if self.error is not None:
            entry["error"] = self.error
        elif self.failed:
            entry["error"] = "failed checks: " + ", ".join(self.failed)
        return entry


class Tour:
    """The state the stages of one ``coinfer demo`` run share (everything below ``workdir``)."""

    def __init__(self, workdir: Path, say: Say) -> None:
        self.workdir = workdir
        self.say = say
        self._scenes: Any = None
        self._pretrained: Any = None

    def folder(self, name: str) -> Path:
        """``workdir/name``, made if missing (a stage's own place for what it writes)."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scenes(self) -> Any:
        """The shared :class:`~coinfer.sdk.scenes.SceneSet`, generated on first use."""
        if self._scenes is None:
            from coinfer.bench.data.scenes import SceneOptions, generate_scenes

            self.say("generating the shared cameras")
            options = SceneOptions(cameras=SCENE_CAMERAS, seconds=SCENE_SECONDS, tasks=SCENE_TASKS,
                                   audio=True, crowd=2.0)
            self._scenes = generate_scenes(self.workdir / "scenes", options, progress=False, overwrite=True)
        return self._scenes

    def pretrained(self) -> Any:
        """EfficientNet-Lite0 with its ImageNet weights (PyTorch), loaded on first use."""
        if self._pretrained is None:
            from coinfer.sdk.evolve.networks import load_pretrained

            self._pretrained = load_pretrained()
        return self._pretrained


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def new_figure(width: float = 6.0, height: float = 3.6) -> tuple[Any, Any]:
    """A figure and its axes on the Agg backend (nothing is ever shown on screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))

