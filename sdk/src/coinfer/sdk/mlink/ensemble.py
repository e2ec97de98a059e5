"""h_{A,j}: one target's links from several sources, combined with learned weights.

Each source's link output (logits for classes and presence, values for regression and
boxes, per-step log-probabilities for sequences) is weighted by a softmax over the
sources actually executed, so the same trained weights serve any subset A' of A: the
planner may switch models off without retraining. Vector targets learn one weight per
source and output unit, plus a learned constant, the **prior**, mixed in like one more
source that is always present, then apply the task's activation. The prior keeps an
ensemble from doing worse than the best constant guess when the executed sources say
little about the target (text boxes predicted from faces and speech: "no text" is
usually right). Mixing logits (log-probabilities) this way is a product of experts: for
classes, sources that each rule out different answers combine into one sharper answer,
so an ensemble can beat every one of its sources. Training draws a random subset of
sources for half of the batches, so the weights are good for the subsets the planner
will pick, not only for all of them.

Example::

    ensemble = Ensemble(target_endpoint, {"faces": faces_to_speech, "people": people_to_speech})
    ensemble.fit({"faces": face_outputs, "people": people_outputs}, speech_outputs)
    speech = ensemble.predict({"people": people_outputs})     # any subset works
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from coinfer.sdk.mlink.architectures import modules
from coinfer.sdk.mlink.links import (
    Endpoint,
    Link,
    LinkError,
    LinkOptions,
    activate,
    greedy_decode,
    optimise,
    sequence_loss,
    source_tensor,
    target_tensors,
    vector_loss,
)

#: The combination's learning rate. Its few weights must travel far, to near-0/1 softmax
#: shares, for a weak source not to drag a strong one down: at the links' 0.01 they stayed
#: near uniform and adding a weak source to a box target cost 13 IoU points (0.99 -> 0.86).
ENSEMBLE_LEARNING_RATE = 0.2


@dataclass
class Ensemble:
    """Links into one target, keyed by source name, and the learned combination."""

    target: Endpoint
    links: dict[str, Link]
    options: LinkOptions = field(default_factory=LinkOptions)
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.links:
            raise LinkError("an ensemble needs at least one link")
        for name, link in self.links.items():
            if link.target.spec != self.target.spec or link.target.vocabulary != self.target.vocabulary:
                raise LinkError(f"link from {name!r} predicts a different output than this ensemble's target")
        if not self.parameters:
            torch = modules().torch
            if self.target.spec.is_sequence:
                self.parameters = {"weights": torch.zeros(len(self.links), requires_grad=True)}
            else:
                units = self.target.head_width
                self.parameters = {"weights": torch.zeros((len(self.links) + 1, units), requires_grad=True),
                                   "prior": torch.zeros(units, requires_grad=True)}

    @property
    def sources(self) -> list[str]:
        return sorted(self.links)

    def present(self, source_outputs: Mapping[str, Any]) -> list[str]:
        """The sources this ensemble has links from among ``source_outputs``."""
        names = [name for name in self.sources if name in source_outputs]
        if not names:
            raise LinkError(f"none of the executed models {sorted(source_outputs)} has a link into this "
                            f"target (links from {self.sources})")
        return names

    def source_weights(self, names: list[str]) -> Any:
        """Softmax of the learned weights over ``names`` (per output unit for vectors, where
        the prior's row comes last and is always present)."""
        torch = modules().torch
        rows = [self.sources.index(name) for name in names]
        if not self.target.spec.is_sequence:
            rows.append(len(self.sources))
        return torch.softmax(self.parameters["weights"][rows], dim=0)

    def combine(self, names: list[str], logits: list[Any]) -> Any:
        weights = self.source_weights(names)
        prior = self.parameters["prior"].expand_as(logits[0])
        return sum(weight * value for weight, value in zip(weights, [*logits, prior], strict=True))

    def fit(self, source_outputs: Mapping[str, Any], target_outputs: Any,
            epochs: int | None = None) -> list[float]:
        """Learn the combination on aligned outputs of every source and the target (the
        links themselves stay as they are)."""
        torch = modules().torch
        names = self.present(source_outputs)
        if len(names) != len(self.sources):
            missing = sorted(set(self.sources) - set(names))
            raise LinkError(f"training an ensemble needs every source's outputs; missing {missing}")
        inputs, wanted = target_tensors(self.target, target_outputs)
        with torch.no_grad():
            if self.target.spec.is_sequence:
                features = []
                for name in names:
                    link = self.links[name]
                    state, memory, mask = link.network.encode(
                        source_tensor(link.source, source_outputs[name]))
                    logits, _ = link.network.steps(inputs, state, memory, mask)
                    features.append(torch.log_softmax(logits, dim=-1))
            else:
                features = [self.links[name].logits(source_outputs[name]) for name in names]
        if any(len(feature) != len(wanted) for feature in features):
            raise LinkError("source and target outputs must align row by row")
        generator = torch.Generator().manual_seed(self.options.seed + 1)
        batches = [0]

        def loss_of(index: Any) -> Any:
            batches[0] += 1
            keep = list(range(len(names)))
            if batches[0] % 2 == 0 and len(names) > 1:
                mask = torch.rand(len(names), generator=generator) < 0.5
                keep = ([k for k in keep if mask[k]]
                        or [int(torch.randint(len(names), (1,), generator=generator))])
            chosen = [names[k] for k in keep]
            if self.target.spec.is_sequence:
                weights = self.source_weights(chosen)
                mixed = sum(weights[i] * features[k][index] for i, k in enumerate(keep))
                return sequence_loss(mixed, wanted[index])
            return vector_loss(self.target.spec, self.combine(chosen, [features[k][index] for k in keep]),
                               wanted[index])

        options = replace(self.options, learning_rate=ENSEMBLE_LEARNING_RATE)
        return optimise(list(self.parameters.values()), loss_of, len(wanted), options,
                        self.options.epochs if epochs is None else epochs)

    def predict(self, source_outputs: Mapping[str, Any]) -> Any:
        """The target's predicted outputs from whichever of the sources are given."""
        torch = modules().torch
        names = self.present(source_outputs)
        with torch.no_grad():
            if self.target.spec.is_sequence:
                weights = self.source_weights(names).tolist()
                return greedy_decode([self.links[name] for name in names], weights,
                                     {k: source_outputs[name] for k, name in enumerate(names)})
            logits = [self.links[name].logits(source_outputs[name]) for name in names]
            return activate(self.target.spec, self.combine(names, logits)).numpy().astype(np.float32)

    def weights(self) -> dict[str, np.ndarray]:
        return {name: value.detach().numpy().astype(np.float32).copy()
                for name, value in self.parameters.items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        torch = modules().torch
        if set(weights) != set(self.parameters):
            raise LinkError(f"ensemble weights must be {sorted(self.parameters)}, got {sorted(weights)}")
        for name, value in weights.items():
            value = np.asarray(value)
            if tuple(value.shape) != tuple(self.parameters[name].shape) or not np.isfinite(value).all():
                raise LinkError(f"ensemble weight {name!r} must be finite with shape "
                                f"{tuple(self.parameters[name].shape)}, got {value.shape}")
            self.parameters[name] = torch.tensor(np.asarray(value, np.float32), requires_grad=True)
