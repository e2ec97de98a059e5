"""The four link networks of MLink, in PyTorch (imported only when a link is built).

The source's format picks the encoder and the target's the head:

- vector source: an MLP (ReLU) whose output is the summary and, cut into ``MEMORY_SLOTS``
  vectors, the memory a sequence decoder attends over;
- sequence source: embedding then LSTM; the last hidden state is the summary and the
  per-token outputs are the memory (padding masked out);
- vector target: an MLP from the summary to the pre-activation output;
- sequence target: embedding, LSTM (initial state from the summary), attention over the
  memory, then a dense layer to the token logits.

Every operation is per sample (packed sequences, masks per row, batched matrix products),
so a sample's output never depends on its batch mates: the public MLink code's attention
mixed samples across a batch.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

#: How many vectors a vector source's encoder offers a sequence decoder's attention.
MEMORY_SLOTS = 4


@functools.cache
def modules() -> SimpleNamespace:
    """The network classes, defined on first use so importing the SDK never imports torch."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class VectorEncoder(nn.Module):
        def __init__(self, inputs: int, hidden: int, memory: bool) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU())
            self.slots = nn.Linear(hidden, hidden * MEMORY_SLOTS) if memory else None

        def forward(self, source: Any) -> tuple[Any, Any, Any]:
            summary = self.mlp(source)
            if self.slots is None:
                return summary, None, None
            memory = self.slots(summary).view(summary.shape[0], MEMORY_SLOTS, -1)
            mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
            return summary, memory, mask

    class SequenceEncoder(nn.Module):
        def __init__(self, vocabulary: int, hidden: int) -> None:
            super().__init__()
            self.embedding = nn.Embedding(vocabulary, hidden, padding_idx=0)
            self.lstm = nn.LSTM(hidden, hidden, batch_first=True)

        def forward(self, source: Any) -> tuple[Any, Any, Any]:
            ids, lengths = source
            packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            outputs, (last, _) = self.lstm(packed)
            memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=ids.shape[1])
            return last[0], memory, ids != 0

    class VectorHead(nn.Module):
        def __init__(self, hidden: int, outputs: int) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))

        def forward(self, summary: Any) -> Any:
            return self.mlp(summary)

    class SequenceDecoder(nn.Module):
        def __init__(self, vocabulary: int, hidden: int) -> None:
            super().__init__()
            self.start = nn.Linear(hidden, hidden)
            self.embedding = nn.Embedding(vocabulary, hidden, padding_idx=0)
            self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
            self.score = nn.Linear(hidden, hidden, bias=False)
            self.combine = nn.Linear(2 * hidden, hidden)
            self.out = nn.Linear(hidden, vocabulary)

        def initial_state(self, summary: Any) -> tuple[Any, Any]:
            h = torch.tanh(self.start(summary)).unsqueeze(0)
            return h, torch.zeros_like(h)

        def forward(self, tokens: Any, state: tuple[Any, Any], memory: Any, mask: Any) -> tuple[Any, Any]:
            """Logits ``[N, T, vocabulary]`` for the next token after each of ``tokens``."""
            queries, state = self.lstm(self.embedding(tokens), state)
            scores = torch.bmm(self.score(queries), memory.transpose(1, 2))
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
            context = torch.bmm(torch.softmax(scores, dim=-1), memory)
            mixed = torch.tanh(self.combine(torch.cat([queries, context], dim=-1)))
            return self.out(mixed), state

    class LinkNetwork(nn.Module):
        """g_ij: an encoder for the source's format and a head for the target's."""

        def __init__(self, source_size: int, source_sequence: bool, target_size: int,
                     target_sequence: bool, hidden: int) -> None:
            super().__init__()
            self.encoder = (SequenceEncoder(source_size, hidden) if source_sequence
                            else VectorEncoder(source_size, hidden, memory=target_sequence))
            self.head = (SequenceDecoder(target_size, hidden) if target_sequence
                         else VectorHead(hidden, target_size))

        def vector(self, source: Any) -> Any:
            summary, _, _ = self.encoder(source)
            return self.head(summary)

        def encode(self, source: Any) -> tuple[Any, Any, Any]:
            """Decoder state, memory and mask: for a sequence target, whose head is a SequenceDecoder."""
            summary, memory, mask = self.encoder(source)
            return cast(SequenceDecoder, self.head).initial_state(summary), memory, mask

        def steps(self, tokens: Any, state: Any, memory: Any, mask: Any) -> tuple[Any, Any]:
            return self.head(tokens, state, memory, mask)

    return SimpleNamespace(torch=torch, nn=nn, LinkNetwork=LinkNetwork)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block. Links are so small that thread hand-offs
    cost more than the arithmetic: training one 4-unit link for 25 epochs took 0.21 s on one
    thread and 2.7 s on two on a loaded 2-core machine."""
    torch = modules().torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_hidden(target_size: int, target_sequence: bool) -> int:
    """Twice the output width, as the paper does, with a floor for one-unit outputs and a
    ceiling for large vocabularies."""
    return min(256, max(32 if target_sequence else 16, 2 * target_size))
