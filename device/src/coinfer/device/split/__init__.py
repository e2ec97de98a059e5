"""The device side of split inference: :class:`SplitClient` runs the head and sends the cut."""

from coinfer.device.split.client import CallStats, SplitClient, SplitClientError

__all__ = ["CallStats", "SplitClient", "SplitClientError"]
