"""The STIP data owner on a device: :class:`STIPClient`."""

from coinfer.device.stip.client import STIPClient, StipClientError

__all__ = ["STIPClient", "StipClientError"]
