"""A model link g_ij: predicts one black-box model's output from another's output.

Trained on soft outputs (the target model's raw probabilities or values, not arg-max
labels) with RMSprop, as the paper does; keeps training when new pairs arrive (online
updates, federated rounds). Weights travel as named float32 arrays, which is what the
federated aggregation averages and what link artifacts hold (safetensors, never pickle).

Example::

    from coinfer.sdk.mlink import Link, LinkOptions, OutputSpec

    link = Link.train(OutputSpec.classes(4), OutputSpec.presence(), face_counts, speech,
                      LinkOptions(epochs=50))
    predicted_speech = link.predict(new_face_counts)   # [N, 1] probabilities
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.sdk.errors import CoinferError
from coinfer.sdk.mlink.architectures import default_hidden, modules, one_thread
from coinfer.sdk.mlink.metrics import MIN_BOX_AREA
from coinfer.sdk.mlink.outputs import BOS, PAD, OutputError, OutputSpec, Vocabulary


class LinkError(CoinferError, ValueError):
    """A link cannot be built, trained or loaded from what it was given."""


@dataclass(frozen=True)
class LinkOptions:
    """Training settings; the defaults are the paper's (RMSprop, lr 0.01, 100 epochs, batch 32).
    ``hidden`` None means twice the output width (see :func:`default_hidden`)."""

    epochs: int = 100
    learning_rate: float = 0.01
    batch: int = 32
    hidden: int | None = None
    clip_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise LinkError(f"{name} must be a non-negative integer, got {value!r}")
        if self.hidden is not None and (not isinstance(self.hidden, int) or not 1 <= self.hidden <= 4096):
            raise LinkError(f"hidden must be an integer in [1, 4096], got {self.hidden!r}")
        if not self.learning_rate > 0:
            raise LinkError(f"learning_rate must be positive, got {self.learning_rate!r}")


@dataclass(frozen=True)
class Endpoint:
    """One side of a link: the output format and, for sequences, the token vocabulary."""

    spec: OutputSpec
    vocabulary: Vocabulary | None = None

    @property
    def width(self) -> int:
        """Vector width, or the compact vocabulary's size for sequences."""
        if not self.spec.is_sequence:
            return self.spec.size
        return self.sequence_vocabulary.size

    @property
    def sequence_vocabulary(self) -> Vocabulary:
        """The vocabulary a sequence endpoint's tokens are encoded with; it must have one."""
        if self.vocabulary is None:
            raise LinkError("a sequence endpoint needs a vocabulary")
        return self.vocabulary

    @property
    def head_width(self) -> int:
        """Units a link predicting this output ends in: one more than the box for IoU-scored
        boxes (a presence logit, see :func:`activate`)."""
        return self.width + 1 if self.spec.metric == "iou" else self.width

    @property
    def steps(self) -> int:
        """Sequence length with room for the end token."""
        return self.spec.max_length + 1


def source_tensor(endpoint: Endpoint, outputs: Any, name: str = "source") -> Any:
    """A source model's outputs as the link network takes them (checked first)."""
    torch = modules().torch
    checked = endpoint.spec.check(outputs, name)
    if not endpoint.spec.is_sequence:
        return torch.from_numpy(checked)
    ids = torch.from_numpy(endpoint.sequence_vocabulary.encode(checked, endpoint.steps))
    return ids, (ids != PAD).sum(dim=1)


def target_tensors(endpoint: Endpoint, outputs: Any, name: str = "target") -> tuple[Any, Any]:
    """(decoder inputs, wanted) for a sequence target; (None, values) for vectors."""
    torch = modules().torch
    checked = endpoint.spec.check(outputs, name)
    if not endpoint.spec.is_sequence:
        return None, torch.from_numpy(checked)
    wanted = torch.from_numpy(endpoint.sequence_vocabulary.encode(checked, endpoint.steps))
    inputs = torch.cat([torch.full((len(checked), 1), BOS, dtype=torch.long), wanted[:, :-1]], dim=1)
    return inputs, wanted


def activate(spec: OutputSpec, logits: Any) -> Any:
    """The target task's output activation. A box head's last unit is a presence logit: the
    box is output where it is positive, all zeros (nothing found) elsewhere. Regressing
    the box alone, a link unsure whether anything is there predicts a shrunken average box,
    which IoU scores 0 on every empty frame, and most frames are empty."""
    torch = modules().torch
    if spec.task == "softmax":
        return torch.softmax(logits, dim=-1)
    if spec.task == "sigmoid":
        return torch.sigmoid(logits)
    if spec.metric == "iou":
        return torch.where(logits[:, 4:] > 0, logits[:, :4], torch.zeros_like(logits[:, :4]))
    return logits


def vector_loss(spec: OutputSpec, logits: Any, wanted: Any) -> Any:
    """Soft cross-entropy, binary cross-entropy on soft targets, or mean squared error (a
    box: presence cross-entropy plus the absolute error of the boxes that are there, whose
    gradient does not fade as the box gets close, as IoU needs)."""
    torch = modules().torch
    if spec.task == "softmax":
        return -(wanted * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    if spec.task == "sigmoid":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, wanted)
    if spec.metric == "iou":
        present = (wanted[:, 2] * wanted[:, 3] >= MIN_BOX_AREA).float()
        presence = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 4], present)
        box_error = (logits[:, :4] - wanted).abs().mean(dim=1)
        return presence + (box_error * present).sum() / present.sum().clamp(min=1.0)
    return torch.nn.functional.mse_loss(logits, wanted)


def sequence_loss(logits: Any, wanted: Any) -> Any:
    functional = modules().torch.nn.functional
    return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), wanted.reshape(-1),
                                    ignore_index=PAD)


def rows(batch: Any, index: Any) -> Any:
    """``index`` rows of a tensor or of an (ids, lengths) pair."""
    if isinstance(batch, tuple):
        return tuple(part[index] for part in batch)
    return batch[index]


def row_count(batch: Any) -> int:
    return int((batch[0] if isinstance(batch, tuple) else batch).shape[0])


def optimise(parameters: list[Any], loss_of: Callable[[Any], Any], count: int, options: LinkOptions,
             epochs: int) -> list[float]:
    """Mini-batch RMSprop over ``count`` samples; ``loss_of(index)`` is a batch's loss.
    The learning rate falls to 0 along a cosine over the run: at a constant 0.01 the last
    epochs jump around the minimum (box links ended anywhere between 0.59 and 0.97 IoU
    depending on the seed). Returns each epoch's mean loss."""
    torch = modules().torch
    optimizer = torch.optim.RMSprop(parameters, lr=options.learning_rate)
    steps = max(1, epochs * -(-count // options.batch))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    generator = torch.Generator().manual_seed(options.seed)
    history = []
    with one_thread():
        for _ in range(epochs):
            order, total = torch.randperm(count, generator=generator), 0.0
            for start in range(0, count, options.batch):
                index = order[start:start + options.batch]
                loss = loss_of(index)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, options.clip_norm)
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
            history.append(total / count)
    return history


@dataclass
class Link:
    """g_ij from ``source`` outputs to ``target`` outputs; build with :meth:`create` or
    :meth:`train`, restore with :meth:`from_weights`."""

    source: Endpoint
    target: Endpoint
    hidden: int
    network: Any
    options: LinkOptions = field(default_factory=LinkOptions)
    history: list[float] = field(default_factory=list)

    @staticmethod
    def create(source: Endpoint | OutputSpec, target: Endpoint | OutputSpec,
               options: LinkOptions | None = None) -> Link:
        """An untrained link (seeded initial weights)."""
        options = options or LinkOptions()
        source = source if isinstance(source, Endpoint) else Endpoint(source)
        target = target if isinstance(target, Endpoint) else Endpoint(target)
        hidden = options.hidden or default_hidden(target.head_width, target.spec.is_sequence)
        torch = modules().torch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            network = modules().LinkNetwork(source.width, source.spec.is_sequence, target.head_width,
                                            target.spec.is_sequence, hidden)
        return Link(source, target, hidden, network, options)

    @staticmethod
    def train(source: Endpoint | OutputSpec, target: Endpoint | OutputSpec, source_outputs: Any,
              target_outputs: Any, options: LinkOptions | None = None) -> Link:
        """Build and fit a link; sequence vocabularies come from these outputs when the
        endpoints do not bring their own."""
        source, target = (endpoint if isinstance(endpoint, Endpoint) else Endpoint(endpoint)
                          for endpoint in (source, target))
        source = with_vocabulary(source, source_outputs, "source")
        target = with_vocabulary(target, target_outputs, "target")
        link = Link.create(source, target, options)
        link.fit(source_outputs, target_outputs)
        return link

    def fit(self, source_outputs: Any, target_outputs: Any, epochs: int | None = None) -> list[float]:
        """Keep training on these pairs (all of them, ``epochs`` passes); returns the losses."""
        source = source_tensor(self.source, source_outputs)
        inputs, wanted = target_tensors(self.target, target_outputs)
        count = len(wanted)
        if row_count(source) != count:
            raise LinkError(f"{row_count(source)} source outputs but {count} target outputs: "
                            "pairs must align")
        if count == 0:
            raise LinkError("no pairs to train on")
        self.network.train()

        def loss_of(index: Any) -> Any:
            return self.loss(rows(source, index), None if inputs is None else inputs[index], wanted[index])

        losses = optimise(list(self.network.parameters()), loss_of, count, self.options,
                          self.options.epochs if epochs is None else epochs)
        self.network.eval()
        self.history.extend(losses)
        return losses

    def loss(self, source: Any, inputs: Any, wanted: Any) -> Any:
        if self.target.spec.is_sequence:
            state, memory, mask = self.network.encode(source)
            logits, _ = self.network.steps(inputs, state, memory, mask)
            return sequence_loss(logits, wanted)
        return vector_loss(self.target.spec, self.network.vector(source), wanted)

    def logits(self, source_outputs: Any) -> Any:
        """Pre-activation vector outputs (a torch tensor, no gradient)."""
        torch = modules().torch
        if self.target.spec.is_sequence:
            raise LinkError("a sequence link has no single logit vector; use predict")
        if len(source_outputs) == 0:
            return torch.zeros((0, self.target.spec.size))
        with torch.no_grad(), one_thread():
            return self.network.vector(source_tensor(self.source, source_outputs))

    def predict(self, source_outputs: Any) -> Any:
        """Predicted target outputs: float32 ``[N, size]`` vectors (after the task's
        activation) or a list of token-id tuples decoded greedily."""
        if self.target.spec.is_sequence:
            return greedy_decode([self], [1.0], {0: source_outputs})
        return activate(self.target.spec, self.logits(source_outputs)).numpy().astype(np.float32)

    def weights(self) -> dict[str, np.ndarray]:
        """Named float32 copies of every parameter (what federated rounds exchange)."""
        return {name: value.detach().numpy().astype(np.float32).copy()
                for name, value in self.network.state_dict().items()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace every parameter; names and shapes must match this link exactly."""
        torch = modules().torch
        current = self.network.state_dict()
        if set(weights) != set(current):
            missing, extra = sorted(set(current) - set(weights)), sorted(set(weights) - set(current))
            raise LinkError(f"weights do not fit this link: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, value in weights.items():
            value = np.asarray(value)
            if tuple(value.shape) != tuple(current[name].shape):
                raise LinkError(f"weight {name!r} has shape {value.shape}, the link needs "
                                f"{tuple(current[name].shape)}")
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise LinkError(f"weight {name!r} must be finite floats")
        self.network.load_state_dict({name: torch.from_numpy(np.asarray(value, np.float32).copy())
                                      for name, value in weights.items()})
        self.network.eval()


def with_vocabulary(endpoint: Endpoint, outputs: Any, name: str) -> Endpoint:
    """``endpoint`` with a vocabulary built from ``outputs`` if it is a sequence without one."""
    if not endpoint.spec.is_sequence or endpoint.vocabulary is not None:
        return endpoint
    try:
        return Endpoint(endpoint.spec, Vocabulary.build(endpoint.spec.check(outputs, name)))
    except OutputError as error:
        raise LinkError(str(error)) from None


def greedy_decode(links: list[Link], weights: list[float],
                  sources: Mapping[int, Any]) -> list[tuple[int, ...]]:
    """Jointly decode sequence links into the same target: at each step the next token is
    the arg-max of the weighted sum of the links' log-probabilities (one link: plain greedy).
    ``sources[k]`` are the source outputs of ``links[k]``."""
    if len(sources[0]) == 0:
        return []
    torch = modules().torch
    target = links[0].target
    with torch.no_grad(), one_thread():
        encoded = [link.network.encode(source_tensor(link.source, sources[k]))
                   for k, link in enumerate(links)]
        count = encoded[0][1].shape[0]
        token = torch.full((count, 1), BOS, dtype=torch.long)
        states = [state for state, _, _ in encoded]
        produced = torch.zeros((count, target.steps), dtype=torch.long)
        for step in range(target.steps):
            mixed: Any = 0
            for k, (link, weight) in enumerate(zip(links, weights, strict=True)):
                _, memory, mask = encoded[k]
                logits, states[k] = link.network.steps(token, states[k], memory, mask)
                mixed = mixed + weight * torch.log_softmax(logits[:, -1], dim=-1)
            token = mixed.argmax(dim=-1, keepdim=True)
            produced[:, step] = token[:, 0]
    return [target.sequence_vocabulary.decode(row) for row in produced.tolist()]
