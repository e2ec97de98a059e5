"""Zero-shot topic classification with the real MiniLM-L6 sentence encoder.

No topic-labelled training data exists on the device or the edge, so the "heavy model"
of the text filtering workloads is zero-shot: every topic is described by a few English
prompts, a message's topic scores are the cosine similarities between its embedding and
the mean embedding of each topic's prompts, and a softmax with a temperature turns the
scores into probabilities. The temperature sets how peaked the probabilities are; it does
not change the label.

The token ids the encoder saw are returned with the predictions, so that a small filter
(InFi) can learn to predict the classifier's output from the same inputs. Torch and
transformers are imported when a classifier is built, never at module import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.bench.models import minilm
from coinfer.sdk.errors import CoinferError

#: Descriptions of the topics of :mod:`coinfer.bench.data.corpus`, several per topic, so that
#: no single wording decides the topic's direction in embedding space.
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    "sports": (
        "This message is about sports, games, teams and matches.",
        "A sports result: a team won or lost a game, a player scored a goal.",
        "News about football, basketball, tennis, athletes, coaches and tournaments.",
    ),
    "weather": (
        "This message is about the weather: rain, snow, sun, wind and temperature.",
        "A weather forecast or warning about storms, heat, cold, fog or floods.",
        "News about the climate, the forecast and the temperature outside today.",
    ),
    "traffic": (
        "This message is about traffic: roads, cars, accidents, congestion and delays.",
        "A commuting update about road closures, roadworks, buses and trains.",
        "News about drivers, highways, jams, parking and public transport.",
    ),
    "finance": (
        "This message is about finance: money, stocks, shares, markets and banks.",
        "Economy news about interest rates, inflation, prices, profits and earnings.",
        "An update on investors, the stock market, currencies, savings and mortgages.",
    ),
    "technology": (
        "This message is about technology: computers, software, smartphones and the internet.",
        "Tech news about gadgets, apps, updates, AI, chips and cybersecurity.",
        "An update on laptops, servers, data breaches, bugs and new devices.",
    ),
    "health": (
        "This message is about health: medicine, doctors, hospitals and illness.",
        "Health advice about disease, vaccines, symptoms, fitness and sleep.",
        "News about patients, treatment, a virus outbreak and medical research.",
    ),
    "food": (
        "This message is about food: cooking, recipes, meals and restaurants.",
        "A message about eating and drinking: dishes, chefs, cafes and dinner.",
        "News about a new restaurant, a recipe, baking, groceries and tasty dishes.",
    ),
    "local": (
        "This message is about local politics: the mayor, the city council and elections.",
        "Community news about town hall meetings, schools, libraries and housing.",
        "An update on local government, voters, public services and city budgets.",
    ),
}


@dataclass(frozen=True)
class TopicClassifierOptions:
    """How messages are scored: a lower ``temperature`` gives more peaked probabilities;
    ``batch_size`` and ``max_length`` (tokens, longer messages are truncated) bound memory."""

    temperature: float = 0.03
    batch_size: int = 64
    max_length: int = 64

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not 1e-4 <= self.temperature <= 10:
            errors.append(f"temperature must be in [0.0001, 10], got {self.temperature!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) \
                or not 1 <= self.batch_size <= 4096:
            errors.append(f"batch_size must be an integer in [1, 4096], got {self.batch_size!r}")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) \
                or not 2 <= self.max_length <= minilm.MAX_LENGTH:
            errors.append(f"max_length must be an integer in [2, {minilm.MAX_LENGTH}], "
                          f"got {self.max_length!r}")
        if errors:
            raise CoinferError("invalid topic classifier options: " + "; ".join(errors))


@dataclass(frozen=True)
class TopicPredictions:
    """The classifier's output for N messages over K topics (``labels``)."""

    labels: tuple[str, ...]
    similarities: np.ndarray  # float32 [N, K], cosine similarity to each topic
    probabilities: np.ndarray  # float32 [N, K], softmax(similarities / temperature)
    token_ids: list[np.ndarray]  # int64 per message, [CLS] ... [SEP] without padding

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def label_index(self) -> np.ndarray:
        """int64 [N]: index of the most probable topic."""
        return np.argmax(self.probabilities, axis=1).astype(np.int64)

    @property
    def label(self) -> list[str]:
        return [self.labels[k] for k in self.label_index]

    @property
    def confidence(self) -> np.ndarray:
        """float32 [N]: probability of the most probable topic."""
        return self.probabilities.max(axis=1)


def check_texts(texts: Sequence[str]) -> list[str]:
    """Reject what is not a non-empty sequence of strings, naming the first bad item."""
    if isinstance(texts, (str, bytes)):
        raise CoinferError("expected a sequence of strings, got a single string; wrap it in a list")
    try:
        items = list(texts)
    except TypeError as error:
        raise CoinferError(f"expected a sequence of strings, got {type(texts).__name__}") from error
    if not items:
        raise CoinferError("expected a non-empty sequence of strings, got an empty one")
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise CoinferError(f"expected strings, but item {position} is {type(item).__name__}: {item!r}")
    return items


class TopicClassifier:
    """Zero-shot topic classifier: MiniLM-L6 embeddings compared with topic prompts."""

    def __init__(self, prompts: Mapping[str, Sequence[str]] | None = None,
                 options: TopicClassifierOptions | None = None, encoder: Any = None) -> None:
        prompts = DEFAULT_PROMPTS if prompts is None else prompts
        if not prompts:
            raise CoinferError("a topic classifier needs at least one topic")
        for topic, texts in prompts.items():
            if not isinstance(topic, str) or not topic:
                raise CoinferError(f"topic names must be non-empty strings, got {topic!r}")
            check_texts(texts)
        self.options = options or TopicClassifierOptions()
        self.prompts = {topic: tuple(texts) for topic, texts in prompts.items()}
        self.labels = tuple(self.prompts)
        self.encoder = encoder if encoder is not None else minilm.load_sentence_encoder()
        self.topic_vectors = np.stack([self._topic_vector(texts) for texts in self.prompts.values()])

    def _topic_vector(self, texts: Sequence[str]) -> np.ndarray:
        vectors, _ = self.embed(texts)
        mean = vectors.mean(axis=0)
        return mean / np.linalg.norm(mean)

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Unit-length float32 [N, 384] embeddings and the token ids of every text."""
        import torch

        items = check_texts(texts)
        vectors: list[np.ndarray] = []
        token_ids: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(items), self.options.batch_size):
                batch = minilm.tokenize(items[start:start + self.options.batch_size],
                                        max_length=self.options.max_length)
                ids, mask = batch["input_ids"], batch["attention_mask"]
                output = self.encoder(torch.from_numpy(ids), torch.from_numpy(mask))
                vectors.append(output.numpy().astype(np.float32))
                token_ids.extend(row[row_mask == 1] for row, row_mask in zip(ids, mask, strict=True))
        return np.concatenate(vectors), token_ids

    def classify(self, texts: Sequence[str]) -> TopicPredictions:
        """Topic probabilities of every text (a non-empty sequence of strings)."""
        vectors, token_ids = self.embed(texts)
        similarities = vectors @ self.topic_vectors.T
        logits = similarities.astype(np.float64) / self.options.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        probabilities = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        return TopicPredictions(self.labels, similarities.astype(np.float32), probabilities, token_ids)
