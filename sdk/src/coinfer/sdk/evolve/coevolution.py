"""Co-evolution (NestEvo section 5): every drifted device model and a middle copy of the global
model learn from each other on the device's uploads; the middle models are averaged into a new
global model, which is then distilled back into every device.

Why in rounds: one long round lets each middle model wander far towards its own camera
(the cameras are non-IID by construction: a rural camera sees no campus), and the average of
far-apart models is worse than any of them. Splitting the same epochs into federated rounds,
each starting every middle model from the latest average, keeps the middle models close
(FedAvg's answer to client drift). With a generator (NestEvo proper, unlike baseline A2),
the conditional feature generator is learnt from the round's middle predictors after every
round and its embeddings of labels drawn from all cameras join the next rounds' training.

The algorithm works on prefix features (see :mod:`coinfer.sdk.evolve.training`); the edge
service and the bench call it the same way.

>>> options = CoEvolutionOptions(rounds=3)
>>> options.round_options.epochs, options.aggregate
(2, 'mean')
>>> CoEvolutionOptions(rounds=0)
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: rounds must be an integer in [1, 1000], got 0
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.evolve import training
from coinfer.sdk.mlink.robust import AGGREGATES, RobustOptions, aggregate

Say = Callable[[str], None]


@dataclass(frozen=True)
class CoEvolutionOptions:
    """``train``: the evolution's training options; its ``epochs`` are split over ``rounds``
    federated rounds of mutual learning (at least one epoch each) and used again for the final
    distillation. ``generator``: the conditional feature generator's options, or None for
    co-evolution without generation (baseline A2). ``aggregate``: how the middle models are
    combined (MLink's aggregates; ``mean`` weighted by upload counts is FedAvg)."""

    train: training.TrainOptions = field(default_factory=lambda: training.TrainOptions(epochs=6))
    rounds: int = 3
    generator: training.GeneratorOptions | None = field(default_factory=training.GeneratorOptions)
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or not 1 <= self.rounds <= 1000:
            raise InvalidArgumentError(f"rounds must be an integer in [1, 1000], got {self.rounds!r}")
        if self.aggregate not in AGGREGATES:
            raise InvalidArgumentError(f"aggregate must be one of {', '.join(AGGREGATES)}, "
                                       f"got {self.aggregate!r}")

    @property
    def round_options(self) -> training.TrainOptions:
        """The training options of one round of mutual learning."""
        return replace(self.train, epochs=max(1, math.ceil(self.train.epochs / self.rounds)))


@dataclass
class Participant:
    """One device taking part: its ``id``, its ``model`` (trained in place) and the prefix
    features and labels of its uploaded frames."""

    id: str
    model: Any
    features: np.ndarray
    labels: np.ndarray


@dataclass
class CoEvolutionResult:
    """The new global model and, per participant, the training seconds its new model waited
    for (its own training plus the shared aggregation and generator steps)."""

    global_model: Any
    seconds: dict[str, float]


def average_models(global_model: Any, models: Sequence[Any], kind: str = "mean",
                   samples: Sequence[int] | None = None) -> Any:
    """A new model whose weights are ``global_model``'s plus the combined deltas of ``models``
    (copies of it after training): MLink's federated aggregate, unclipped for ``mean``."""
    base = training.state_arrays(global_model)
    deltas = [{name: training.state_arrays(model)[name] - value for name, value in base.items()}
              for model in models]
    robust = (RobustOptions(kind, clip_factor=math.inf, max_growth=math.inf) if kind == "mean"
              else RobustOptions(kind))
    result = aggregate(base, deltas, samples if kind == "mean" else None, robust)
    merged = copy.deepcopy(global_model)
    training.load_state_arrays(merged, result.weights)
    return merged


def co_evolve(global_model: Any, participants: Sequence[Participant], options: CoEvolutionOptions,
              say: Say | None = None) -> CoEvolutionResult:
    """Co-evolve ``participants``' models with ``global_model`` (left unchanged); the
    participants' models end distilled from the new global model."""
    if not participants:
        raise InvalidArgumentError("co-evolution needs at least one participant")
    ids = [p.id for p in participants]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"participant ids must be distinct, got {ids}")
    seconds = {p.id: 0.0 for p in participants}
    pool = np.concatenate([p.labels for p in participants])
    counts = [len(p.labels) for p in participants]
    current, generator = global_model, None
    for number in range(options.rounds):
        middles = []
        for participant in participants:
            middle = copy.deepcopy(current)
            started = time.perf_counter()
            training.mutual_learning(participant.model, middle, participant.features, participant.labels,
                                     replace(options.round_options, seed=options.train.seed + number),
                                     generator=generator, label_pool=pool if generator is not None else None)
            seconds[participant.id] += time.perf_counter() - started
            middles.append(middle)
        started = time.perf_counter()
        current = average_models(current, middles, options.aggregate, counts)
        note = ""
        if options.generator is not None and number + 1 < options.rounds:
            generator = training.train_generator(middles, pool, options.generator)
            note = ", generator trained"
        shared = time.perf_counter() - started
        for participant in participants:
            seconds[participant.id] += shared
        if say:
            say(f"co-evolution round {number + 1}/{options.rounds}: {len(middles)} middle models "
                f"averaged ({options.aggregate}){note}")
    for participant in participants:
        started = time.perf_counter()
        teacher = training.logits(current, participant.features)
        training.distill(participant.model, teacher, participant.features, participant.labels, options.train)
        seconds[participant.id] += time.perf_counter() - started
    return CoEvolutionResult(current, seconds)
