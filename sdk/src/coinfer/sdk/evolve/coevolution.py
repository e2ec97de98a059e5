"""Co-evolution (NestEvo section 5): every drifted device model and a middle copy of the global
model learn from each other on the device's uploads; the middle models are averaged into a new
global model, and every device is distilled from its own last middle model.

Why in rounds: one long round lets each middle model wander far towards its own camera
(the cameras are non-IID by construction: a rural camera sees no campus), and the average of
far-apart models is worse than any of them. Splitting the same epochs into federated rounds,
each starting every middle model from the latest average, keeps the middle models close
(FedAvg's answer to client drift). With a generator (NestEvo proper, unlike baseline A2),
the conditional feature generator is learnt from the round's middle predictors after every
round and its embeddings of labels drawn from all cameras join the next rounds' training.

Why each device's own middle model teaches it at the end (the paper distils the new global
model): averaging serves the majority. The last round's middle model started from the
average and then learnt on this camera, so it keeps what the federation agreed on and adds
what this camera needs (personalisation after federated training, as in FedPer or
fine-tuning the global model). On the full drift set (with its earlier, colour country
domain) NestEvo's mean device gain was 0.039-0.056 in three runs with the global model as the
final teacher and 0.080 with the middle models.

Why a guard: averaging serves the majority. A camera unlike all the others (the real footage
among generated scenes, here) can get a new global model that is worse on its frames than the
old one, and a device distilled from it gets worse too. So a share of every device's uploads
(``validation``) is held out from training, and each device ends with whichever of three
candidates labels its held-out frames best (balanced accuracy on the annotators' labels):
the co-evolved model, the old global model distilled into it (device-only evolution) or the
model it had. The edge never publishes a model that validated worse than the one it replaces.

The algorithm works on prefix features (see :mod:`coinfer.sdk.evolve.training`); the edge
service and the bench call it the same way.

>>> options = CoEvolutionOptions(rounds=3)
>>> options.round_options.epochs, options.aggregate, options.validation
(2, 'mean', 0.25)
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
    combined (MLink's aggregates; ``mean`` weighted by upload counts is FedAvg). ``validation``:
    the share of each device's uploads held out to choose its final model (0: no guard, every
    device keeps its co-evolved model)."""

    train: training.TrainOptions = field(default_factory=lambda: training.TrainOptions(epochs=6))
    rounds: int = 3
    generator: training.GeneratorOptions | None = field(default_factory=training.GeneratorOptions)
    aggregate: str = "mean"
    validation: float = 0.25

    def __post_init__(self) -> None:
        if not isinstance(self.validation, (int, float)) or not 0 <= self.validation <= 0.5:
            raise InvalidArgumentError(f"validation must be in [0, 0.5], got {self.validation!r}")
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


#: The candidates a device's final model is chosen from, in the order ties are broken.
CANDIDATES = ("co-evolved", "distilled", "kept")


@dataclass
class CoEvolutionResult:
    """The new global model and, per participant, the training seconds its new model waited
    for (its own training plus the shared aggregation and generator steps), the candidate it
    ended with (one of :data:`CANDIDATES`) and every candidate's held-out accuracy (empty
    without validation)."""

    global_model: Any
    seconds: dict[str, float]
    chosen: dict[str, str] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)


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
    """Co-evolve ``participants``' models with ``global_model`` (left unchanged); each
    participant's model ends as the co-evolved one (distilled from its last middle model) or,
    with ``options.validation``, as the candidate its held-out uploads chose."""
    if not participants:
        raise InvalidArgumentError("co-evolution needs at least one participant")
    ids = [p.id for p in participants]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"participant ids must be distinct, got {ids}")
    seconds = {p.id: 0.0 for p in participants}
    held = {p.id: _held_out(len(p.labels), options.validation, options.train.seed) for p in participants}
    original = {p.id: copy.deepcopy(p.model) for p in participants} if options.validation else {}
    validation_sets = [(p.features[held[p.id]], p.labels[held[p.id]]) for p in participants]
    participants = [Participant(p.id, p.model, p.features[~held[p.id]], p.labels[~held[p.id]])
                    for p in participants]
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
    for participant, middle in zip(participants, middles, strict=True):
        started = time.perf_counter()
        teacher = training.logits(middle, participant.features)
        training.distill(participant.model, teacher, participant.features, participant.labels, options.train)
        seconds[participant.id] += time.perf_counter() - started
    result = CoEvolutionResult(current, seconds)
    if options.validation:
        for participant, (features, labels) in zip(participants, validation_sets, strict=True):
            started = time.perf_counter()
            _choose(participant, original[participant.id], global_model, features, labels, options, result)
            seconds[participant.id] += time.perf_counter() - started
        if say:
            say("kept per device: " + ", ".join(f"{k} {v}" for k, v in result.chosen.items()))
    return result


def _held_out(count: int, share: float, seed: int) -> np.ndarray:
    """A fixed random ``share`` of ``count`` uploads (at least one, and one left to train on)."""
    mask = np.zeros(count, bool)
    if share and count >= 2:
        size = min(count - 1, max(1, round(share * count)))
        mask[np.random.default_rng([seed, count, 11]).choice(count, size, replace=False)] = True
    return mask


def _choose(participant: Participant, original: Any, global_model: Any, features: np.ndarray,
            labels: np.ndarray, options: CoEvolutionOptions, result: CoEvolutionResult) -> None:
    """Replace ``participant.model``'s weights by the candidate that labels the held-out frames
    best: the co-evolved model, the old global model distilled into the old device model, or
    the old device model."""
    distilled = copy.deepcopy(original)
    training.distill(distilled, training.logits(global_model, participant.features), participant.features,
                     participant.labels, options.train)
    candidates = dict(zip(CANDIDATES, (participant.model, distilled, original), strict=True))
    scores = {name: training.balanced_accuracy(training.logits(model, features) > 0, labels)
              for name, model in candidates.items()}
    defined = {name: score for name, score in scores.items() if math.isfinite(score)}
    best = (max(defined, key=lambda name: (defined[name], -CANDIDATES.index(name))) if defined
            else CANDIDATES[0])
    if best != CANDIDATES[0]:
        training.load_state_arrays(participant.model, training.state_arrays(candidates[best]))
    result.chosen[participant.id] = best
    result.validation[participant.id] = scores
