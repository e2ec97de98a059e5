"""Keeping a link right while the stream drifts: label a few steps per period, fine-tune.

Links learn the correlation between two models' outputs on the inputs they were trained
on; a camera's content shifts over the day, so a link trained once ("offline-init")
degrades. Each period the updater predicts the target for every step from the source
output, then spends ``labels`` target-model runs on some of the period's steps and
fine-tunes the link on the labelled pairs kept so far (a bounded replay buffer). The
strategies differ only in which steps they label:

- ``periodic``: random steps (the paper's "50 frames every 10 minutes");
- ``uncertainty``: the steps whose prediction is least certain: the highest entropy for
  classes and presence; for regressions and sequences, which have no probability to
  read, the source outputs farthest from every labelled one (novelty);
- ``loss-prediction``: a small network reads the link's hidden summary of each step
  and predicts the step's loss (1 - performance); the highest predicted losses are
  labelled, and the predictor is refit on every labelled step.

Example::

    updater = OnlineUpdater(link, OnlineOptions(strategy="uncertainty", labels=10))
    for rows in periods:
        predicted = updater.step(source[rows], lambda picked: target[rows][picked])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.mlink.architectures import modules
from coinfer.sdk.mlink.links import Link, LinkError, source_tensor
from coinfer.sdk.mlink.metrics import sample_performance
from coinfer.sdk.mlink.table import concat_rows, take_rows

STRATEGIES = ("none", "periodic", "uncertainty", "loss-prediction")


@dataclass(frozen=True)
class OnlineOptions:
    """Steps labelled per period, fine-tuning epochs per update, replay buffer size."""

    strategy: str = "uncertainty"
    labels: int = 10
    epochs: int = 10
    replay: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LinkError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if self.labels < 0 or self.epochs < 0 or self.replay < 1:
            raise LinkError("labels and epochs must be >= 0 and replay >= 1")


def entropy(spec_task: str, predicted: np.ndarray) -> np.ndarray:
    """Per-row entropy of class or presence probabilities."""
    p = np.clip(np.asarray(predicted, np.float64), 1e-7, 1 - 1e-7)
    if spec_task == "softmax":
        return -(p * np.log(p)).sum(axis=1)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(axis=1)


def novelty(candidates: Any, labelled: Any) -> np.ndarray:
    """Per candidate, the distance to the nearest labelled source output (vectors: L2;
    sequences: 1 if no labelled sequence is identical, else 0)."""
    if isinstance(candidates, np.ndarray):
        if len(labelled) == 0:
            return np.ones(len(candidates))
        distances = np.linalg.norm(candidates[:, None, :] - np.asarray(labelled)[None, :, :], axis=2)
        return distances.min(axis=1)
    seen = set(labelled)
    return np.array([0.0 if row in seen else 1.0 for row in candidates])


@dataclass
class OnlineUpdater:
    """Serves one link on a stream and fine-tunes it on the steps its strategy labels."""

    link: Link
    options: OnlineOptions = field(default_factory=OnlineOptions)
    labelled: int = 0
    sources: list[Any] = field(default_factory=list)
    targets: list[Any] = field(default_factory=list)
    predictor: Any = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.options.seed)

    def step(self, source_outputs: Any, label: Callable[[np.ndarray], Any]) -> Any:
        """Predictions for this period's steps (made before any of them is labelled), then
        label ``options.labels`` of them with ``label(rows)`` and fine-tune."""
        predicted = self.link.predict(source_outputs)
        count = len(source_outputs)
        budget = min(self.options.labels, count)
        if self.options.strategy == "none" or budget == 0:
            return predicted
        picked = np.sort(self.pick(source_outputs, predicted, budget))
        target = label(picked)
        self.remember(take_rows(source_outputs, picked), target)
        self.labelled += picked.size
        sources, targets = concat_rows(self.sources), concat_rows(self.targets)
        self.link.fit(sources, targets, epochs=self.options.epochs)
        if self.options.strategy == "loss-prediction":
            self.fit_predictor(sources, targets)
        return predicted

    def pick(self, source_outputs: Any, predicted: Any, budget: int) -> np.ndarray:
        count = len(source_outputs)
        strategy, spec = self.options.strategy, self.link.target.spec
        if strategy == "periodic" or (strategy == "loss-prediction" and self.predictor is None):
            return self.rng.choice(count, size=budget, replace=False)
        if strategy == "uncertainty":
            if spec.task in ("softmax", "sigmoid"):
                score = entropy(spec.task, predicted)
            else:
                score = novelty(source_outputs, concat_rows(self.sources) if self.sources else [])
        else:
            score = self.predicted_loss(source_outputs)
        score = score + self.rng.uniform(0, 1e-9, count)  # ties broken at random, not by position
        return np.argsort(-score)[:budget]

    def remember(self, sources: Any, targets: Any) -> None:
        """Append labelled pairs, dropping the oldest beyond the replay size."""
        self.sources.append(sources)
        self.targets.append(targets)
        while len(self.sources) > 1 and sum(len(part) for part in self.sources[1:]) >= self.options.replay:
            self.sources.pop(0)
            self.targets.pop(0)

    def summaries(self, source_outputs: Any) -> Any:
        torch = modules().torch
        with torch.no_grad():
            summary, _, _ = self.link.network.encoder(source_tensor(self.link.source, source_outputs))
        return summary

    def fit_predictor(self, sources: Any, targets: Any) -> None:
        """Refit the loss predictor on every labelled pair's measured loss."""
        torch = modules().torch
        loss = 1.0 - sample_performance(self.link.target.spec, self.link.predict(sources), targets)
        features = self.summaries(sources)
        if self.predictor is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                width = features.shape[1]
                self.predictor = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                                     torch.nn.Linear(width, 1))
        optimizer = torch.optim.Adam(self.predictor.parameters(), lr=0.01)
        wanted = torch.as_tensor(loss, dtype=torch.float32)[:, None]
        for _ in range(50):
            optimizer.zero_grad()
            error = torch.nn.functional.mse_loss(self.predictor(features), wanted)
            error.backward()
            optimizer.step()

    def predicted_loss(self, source_outputs: Any) -> np.ndarray:
        torch = modules().torch
        with torch.no_grad():
            return self.predictor(self.summaries(source_outputs))[:, 0].numpy().astype(np.float64)
