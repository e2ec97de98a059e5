"""The error gating raises when what it is given does not fit together."""

from __future__ import annotations

from coinfer.sdk.errors import CoinferError


class GateError(CoinferError, ValueError):
    """Gating inputs that disagree with each other or with the gate's state: views or packet
    batches for another number of streams, results that do not cover every frame, a
    predictor trained for other tasks, a stream selected that has nothing decodable.

    Also a ``ValueError``, so callers that caught the builtin keep working. Argument values
    out of range raise :class:`~coinfer.sdk.errors.InvalidArgumentError`.
    """
