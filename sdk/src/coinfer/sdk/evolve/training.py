"""The learning steps of evolution: fine-tuning, distillation, deep mutual learning, the
conditional feature generator, feature alignment and model averaging (torch, imported lazily).

Every step trains the networks of :mod:`coinfer.sdk.evolve.networks` on *prefix features*
(the frozen trunk's output, computed once per frame by :func:`prefix_features`), so an
evolution task costs only its body's training. Labels are multi-label presence vectors
(bool [N, T]); a model's outputs are one logit per task, read as independent Bernoulli
probabilities, so "cross-entropy" is binary cross-entropy and "KL" is the sum over tasks of
the Bernoulli KL divergence.

The NestEvo losses (paper eq. 15): a device model and its middle model learn from each
other, ``L_local = a CE(y, p_local) + (1 - a) KL(p_mid || p_local)`` and
``L_mid = b CE(y, p_mid) + (1 - b) KL(p_local || p_mid)``; with a generator, both also
classify generated embeddings ``G(y', z)`` as ``y'`` (FedGen's feature-space augmentation:
labels drawn from the union of all cameras' labels pull every predictor towards the
global label distribution, which is what makes the middle models' average work). Distillation
is ``a CE(y, p_student) + (1 - a) KL(p_teacher || p_student)``. The domain-adaptation
baseline aligns the embedding covariances of the source and the camera's frames (CORAL)
while keeping the source task loss, using no camera label.

>>> options = TrainOptions(epochs=2, batch_size=16)
>>> options.alpha, options.lr
(0.5, 0.003)
>>> TrainOptions(epochs=0)
Traceback (most recent call last):
    ...
coinfer.sdk.errors.InvalidArgumentError: epochs must be an integer in [1, 10000], got 0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from coinfer.sdk.errors import InvalidArgumentError

#: Progress callback: (what, step, steps).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TrainOptions:
    """How one training step runs: ``epochs`` over the frames in batches of ``batch_size``
    with Adam at ``lr``; ``alpha`` / ``beta`` weigh the label loss against the other model's
    (eq. 15, and ``alpha`` in distillation); ``generated_weight`` the generated embeddings'
    loss (0.2: on two seeds of the full drift set it gave NestEvo's devices 0.01-0.02 more mean
    gain than 0.5); ``coral_weight`` the alignment term of domain adaptation; ``seed`` the
    shuffles."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-3
    alpha: float = 0.5
    beta: float = 0.5
    generated_weight: float = 0.2
    coral_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("epochs", 1, 10_000), ("batch_size", 1, 65_536), ("seed", 0, 2**31 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 1:
            raise InvalidArgumentError(f"lr must be in (0, 1], got {self.lr!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise InvalidArgumentError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("generated_weight", "coral_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise InvalidArgumentError(f"{name} must be in [0, 100], got {value!r}")


def prefix_features(model: Any, frames: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """The frozen prefix's output for uint8 frames (N, S, S, 3), as float16 (N, C, h, w):
    computed once, shared by every model (their prefixes are the same frozen weights)."""
    import torch

    from coinfer.sdk.evolve.networks import preprocess_tensor

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidArgumentError(f"frames must be uint8 (N, S, S, 3), got {frames.dtype} {frames.shape}")
    chunks = []
    model.prefix.eval()
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            chunks.append(model.prefix(preprocess_tensor(frames[start:start + batch_size])).numpy())
    return np.concatenate(chunks).astype(np.float16)


def _check_data(features: np.ndarray, labels: np.ndarray, tasks: int) -> None:
    if features.ndim != 4 or labels.shape != (len(features), tasks):
        raise InvalidArgumentError(f"features (N, C, h, w) and labels (N, {tasks}) must agree, got "
                                   f"{features.shape} and {labels.shape}")
    if not len(features):
        raise InvalidArgumentError("no frames to train on")


def _batches(count: int, options: TrainOptions, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([options.seed, epoch]).permutation(count)
    return [order[start:start + options.batch_size] for start in range(0, count, options.batch_size)]


def _tensor(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, np.float32))


def _bernoulli_kl(teacher_logits: Any, student_logits: Any) -> Any:
    """Mean over samples of sum over tasks of KL(Bern(p_teacher) || Bern(p_student))."""
    import torch.nn.functional as F

    p = teacher_logits.sigmoid()
    log_p, log_not_p = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_q, log_not_q = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return (p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)).sum(1).mean()


def _bce(logits: Any, labels: Any) -> Any:
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(1).mean()


def _optimizer(model: Any, options: TrainOptions) -> Any:
    import torch

    return torch.optim.Adam(model.trainable_parameters(), lr=options.lr)


def _seed(options: TrainOptions) -> None:
    import torch

    torch.manual_seed(options.seed)


def fine_tune(model: Any, features: np.ndarray | Sequence[np.ndarray], labels: np.ndarray,
              options: TrainOptions, progress: Progress | None = None) -> list[float]:
    """Supervised training on labelled frames (how the deployed models are made from the
    source domain). Returns the mean loss of every epoch."""
    return distill(model, None, features, labels, options, progress=progress)


def _grouped_batches(sizes: Sequence[int], options: TrainOptions, epoch: int) -> list[tuple[int, np.ndarray]]:
    """Batches that never mix groups (feature maps of different sizes cannot share a batch),
    in a shuffled order: (group, rows within the group)."""
    batches = [(group, index) for group, size in enumerate(sizes)
               for index in _batches(size, replace(options, seed=options.seed + 7919 * group), epoch)]
    order = np.random.default_rng([options.seed, epoch, 3]).permutation(len(batches))
    return [batches[i] for i in order]


def distill(student: Any, teacher_logits: np.ndarray | None, features: np.ndarray | Sequence[np.ndarray],
            labels: np.ndarray, options: TrainOptions, progress: Progress | None = None) -> list[float]:
    """Knowledge distillation of ``teacher_logits`` (N, T), the teacher's outputs on the same
    frames, into ``student``: ``alpha CE(y) + (1 - alpha) KL(p_teacher || p_student)``. With no
    teacher it is plain fine-tuning. Returns the mean loss of every epoch.

    ``features`` may be a list of groups of different spatial sizes (full-resolution frames and
    pooled ones, see :mod:`coinfer.sdk.evolve.compression`); ``labels`` and ``teacher_logits``
    then follow the groups' concatenation, and no batch mixes two groups."""
    groups = [features] if isinstance(features, np.ndarray) else list(features)
    offsets = np.cumsum([0, *(len(group) for group in groups)])
    for group, start, stop in zip(groups, offsets[:-1], offsets[1:], strict=True):
        _check_data(group, labels[start:stop], len(student.spec.tasks))
    if len(labels) != offsets[-1]:
        raise InvalidArgumentError(f"{offsets[-1]} frames need as many labels, got {len(labels)}")
    _seed(options)
    optimizer = _optimizer(student, options)
    history = []
    student.train()
    for epoch in range(options.epochs):
        total = 0.0
        for number, index in _grouped_batches([len(g) for g in groups], options, epoch):
            rows = offsets[number] + index
            logits = student.from_prefix(_tensor(groups[number][index]))
            loss = _bce(logits, _tensor(labels[rows]))
            if teacher_logits is not None:
                loss = options.alpha * loss + (1 - options.alpha) * _bernoulli_kl(
                    _tensor(teacher_logits[rows]), logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        history.append(total / len(labels))
        if progress:
            progress("distill" if teacher_logits is not None else "fine-tune", epoch + 1, options.epochs)
    student.eval()
    return history


def mutual_learning(local: Any, mid: Any, features: np.ndarray, labels: np.ndarray, options: TrainOptions,
                    generator: Any = None, label_pool: np.ndarray | None = None,
                    progress: Progress | None = None) -> list[float]:
    """Deep mutual learning of a device model and its middle model (eq. 15), each step on the
    same batch; with ``generator`` (and the ``label_pool`` to draw its labels from), both
    predictors also learn to classify generated embeddings. Returns the mean summed loss of
    every epoch."""
    import torch

    _check_data(features, labels, len(local.spec.tasks))
    pool = np.zeros((0, labels.shape[1]), bool) if label_pool is None else np.asarray(label_pool)
    if generator is not None and not len(pool):
        raise InvalidArgumentError("a generator needs a non-empty label_pool to draw labels from")
    _seed(options)
    optimizers = _optimizer(local, options), _optimizer(mid, options)
    rng = np.random.default_rng([options.seed, 1])
    history = []
    local.train()
    mid.train()
    for epoch in range(options.epochs):
        total = 0.0
        for index in _batches(len(features), options, epoch):
            x, y = _tensor(features[index]), _tensor(labels[index])
            local_logits, mid_logits = local.from_prefix(x), mid.from_prefix(x)
            local_loss = (options.alpha * _bce(local_logits, y)
                          + (1 - options.alpha) * _bernoulli_kl(mid_logits.detach(), local_logits))
            mid_loss = (options.beta * _bce(mid_logits, y)
                        + (1 - options.beta) * _bernoulli_kl(local_logits.detach(), mid_logits))
            if generator is not None:
                drawn = _tensor(pool[rng.integers(len(pool), size=len(index))])
                with torch.no_grad():
                    generated = generator.sample(drawn)
                local_loss = local_loss + options.generated_weight * _bce(local.predictor(generated), drawn)
                mid_loss = mid_loss + options.generated_weight * _bce(mid.predictor(generated), drawn)
            for optimizer in optimizers:
                optimizer.zero_grad()
            (local_loss + mid_loss).backward()
            for optimizer in optimizers:
                optimizer.step()
            total += float((local_loss + mid_loss).detach()) * len(index)
        history.append(total / len(features))
        if progress:
            progress("mutual learning", epoch + 1, options.epochs)
    local.eval()
    mid.eval()
    return history


def _generator_class() -> type:
    import torch
    from torch import nn

    class FeatureGenerator(nn.Module):
        """G(y, z): a label vector and Gaussian noise -> an embedding any predictor reads."""

        def __init__(self, tasks: int, embedding: int, noise: int, hidden: int) -> None:
            super().__init__()
            self.noise = noise
            self.net = nn.Sequential(nn.Linear(tasks + noise, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Linear(hidden, embedding), nn.ReLU())

        def forward(self, labels: Any, noise: Any) -> Any:
            return self.net(torch.cat([labels, noise], 1))

        def sample(self, labels: Any) -> Any:
            was_training = self.training
            self.eval()
            embedding = self(labels, torch.randn(len(labels), self.noise))
            self.train(was_training)
            return embedding

    return FeatureGenerator


@dataclass(frozen=True)
class GeneratorOptions:
    """The feature generator: ``noise`` and ``hidden`` widths, ``steps`` of Adam at ``lr`` on
    batches of ``batch_size`` drawn labels, ``diversity`` weight (FedGen's term that keeps
    different noise giving different embeddings), ``seed``."""

    noise: int = 32
    hidden: int = 256
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    diversity: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("noise", 1, 4096), ("hidden", 1, 65_536), ("steps", 1, 1_000_000),
                                ("batch_size", 2, 65_536), ("seed", 0, 2**31 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidArgumentError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 1:
            raise InvalidArgumentError(f"lr must be in (0, 1], got {self.lr!r}")
        if not isinstance(self.diversity, (int, float)) or not 0 <= self.diversity <= 100:
            raise InvalidArgumentError(f"diversity must be in [0, 100], got {self.diversity!r}")


def train_generator(models: Sequence[Any], label_pool: np.ndarray, options: GeneratorOptions,
                    progress: Progress | None = None) -> Any:
    """Learn G so that the ``models``' predictors (frozen here) classify ``G(y, z)`` as ``y``,
    for ``y`` drawn from ``label_pool`` (bool [M, T], the labels of every camera's frames):
    the generator then carries the label-conditional embedding distribution all models agree
    on (the paper's Algorithm 1, after FedGen). Returns the generator in eval mode."""
    import torch

    if not models:
        raise InvalidArgumentError("train_generator needs at least one model")
    pool = np.asarray(label_pool)
    tasks, width = len(models[0].spec.tasks), models[0].spec.embedding
    if pool.ndim != 2 or pool.shape[1] != tasks or not len(pool):
        raise InvalidArgumentError(f"label_pool must be (M, {tasks}) with M >= 1, got {pool.shape}")
    if any(model.spec.embedding != width or len(model.spec.tasks) != tasks for model in models):
        raise InvalidArgumentError("every model must share the embedding width and the tasks")
    torch.manual_seed(options.seed)
    generator = _generator_class()(tasks, width, options.noise, options.hidden)
    optimizer = torch.optim.Adam(generator.parameters(), lr=options.lr)
    rng = np.random.default_rng(options.seed)
    predictors = [model.predictor for model in models]
    for model in models:
        model.eval()
    for step in range(options.steps):
        labels = _tensor(pool[rng.integers(len(pool), size=options.batch_size)])
        noise = torch.randn(options.batch_size, options.noise)
        embedding = generator(labels, noise)
        loss = sum(_bce(predictor(embedding), labels) for predictor in predictors) / len(predictors)
        if options.diversity:
            loss = loss + options.diversity * _diversity_loss(noise, embedding)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress and (step + 1) % max(1, options.steps // 10) == 0:
            progress("generator", step + 1, options.steps)
    for predictor in predictors:
        predictor.zero_grad(set_to_none=True)
    return generator.eval()


def _diversity_loss(noise: Any, embedding: Any) -> Any:
    """exp(-mean(d_emb * d_noise)): small when distances between embeddings follow the
    distances between their noises (different noise, different sample)."""
    import torch

    noise_distance = torch.cdist(noise, noise)
    embedding_distance = torch.cdist(embedding, embedding)
    return torch.exp(-(noise_distance * embedding_distance).mean() / noise.shape[1])


def _coral(source: Any, target: Any) -> Any:
    """Squared Frobenius distance between the two batches' feature covariances (CORAL)."""

    def covariance(x: Any) -> Any:
        centred = x - x.mean(0, keepdim=True)
        return centred.T @ centred / max(1, len(x) - 1)

    width = source.shape[1]
    return ((covariance(source) - covariance(target)) ** 2).sum() / (4 * width * width)


def align_domains(model: Any, source_features: np.ndarray, source_labels: np.ndarray,
                  target_features: np.ndarray, options: TrainOptions,
                  progress: Progress | None = None) -> list[float]:
    """Unsupervised domain adaptation (the A1 baseline): keep the labelled source task while
    aligning the embedding statistics of the camera's unlabelled frames with the source's
    (``CE(source) + coral_weight * CORAL``). Returns the mean loss of every epoch."""
    _check_data(source_features, source_labels, len(model.spec.tasks))
    if target_features.ndim != 4 or not len(target_features):
        raise InvalidArgumentError(f"target features must be a non-empty (N, C, h, w), "
                                   f"got {target_features.shape}")
    _seed(options)
    optimizer = _optimizer(model, options)
    rng = np.random.default_rng([options.seed, 2])
    history = []
    model.train()
    for epoch in range(options.epochs):
        total, seen = 0.0, 0
        for index in _batches(len(target_features), options, epoch):
            source_index = rng.integers(len(source_features), size=max(2, len(index)))
            source_embedding = model.embedding_from_prefix(_tensor(source_features[source_index]))
            target_embedding = model.embedding_from_prefix(_tensor(target_features[index]))
            loss = _bce(model.predictor(source_embedding), _tensor(source_labels[source_index]))
            if len(index) > 1:
                loss = loss + options.coral_weight * _coral(source_embedding, target_embedding)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        history.append(total / seen)
        if progress:
            progress("domain alignment", epoch + 1, options.epochs)
    model.eval()
    return history


def logits(model: Any, features: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The model's logits (N, T) on prefix features, in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model.from_prefix(_tensor(features[start:start + batch_size])).numpy()
                               for start in range(0, len(features), batch_size)]).astype(np.float32)


def embeddings(model: Any, features: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The model's embeddings (N, E) on prefix features: what drift is measured on."""
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model.embedding_from_prefix(_tensor(features[start:start + batch_size]))
                               .numpy() for start in range(0, len(features), batch_size)]).astype(np.float32)


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over tasks of (true-positive rate + true-negative rate) / 2, over the tasks whose
    labels hold both classes (0.5 is chance whatever the class balance); NaN if none does.

    >>> labels = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], bool)
    >>> balanced_accuracy(labels, labels), balanced_accuracy(np.ones_like(labels), labels)
    (1.0, 0.5)
    """
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    if predicted.shape != labels.shape or predicted.ndim != 2:
        raise InvalidArgumentError(f"predictions and labels must both be (N, T), got {predicted.shape} "
                                   f"and {labels.shape}")
    scores = []
    for task in range(labels.shape[1]):
        positive, negative = labels[:, task], ~labels[:, task]
        if positive.any() and negative.any():
            scores.append((predicted[positive, task].mean() + (~predicted[negative, task]).mean()) / 2)
    return float(np.mean(scores)) if scores else float("nan")


def state_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's trainable-part state (body, embedding, predictor, incl. batch-norm
    statistics) as float32 numpy arrays, the unit models are averaged and shipped in."""
    return {name: value.detach().numpy().astype(np.float32) for name, value in model.state_dict().items()
            if not name.startswith("prefix.") and value.dtype.is_floating_point}


def load_state_arrays(model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Put ``arrays`` (from :func:`state_arrays` of the same architecture) into ``model``."""
    import torch

    state = model.state_dict()
    missing = sorted(set(state_arrays(model)) - set(arrays))
    extra = sorted(set(arrays) - set(state))
    if missing or extra:
        raise InvalidArgumentError(f"weights do not fit the architecture: missing {missing[:3]}, "
                                   f"unexpected {extra[:3]}")
    for name, value in arrays.items():
        if tuple(state[name].shape) != tuple(value.shape):
            raise InvalidArgumentError(f"weights do not fit the architecture: {name} is "
                                       f"{tuple(value.shape)}, expected {tuple(state[name].shape)}")
        if not np.all(np.isfinite(value)):
            raise InvalidArgumentError(f"weights hold NaN or infinite values in {name}")
        state[name] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    model.load_state_dict(state)
