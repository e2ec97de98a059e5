"""What the STIP data owner and model server agree on: endpoints, array names, limits.

Requests and responses are :mod:`coinfer.sdk.wire` frames sent as
``application/octet-stream`` over HTTP with ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import dataclasses

from coinfer.sdk.wire import WireLimits

FORWARD_PATH = "/v1/forward"
SESSIONS_PATH = "/v1/sessions"
INFO_PATH = "/v1/info"
CONTENT_TYPE = "application/octet-stream"

#: Array names inside frames.
INPUTS = "inputs_embeds"      # (batch, tokens, hidden) float32, already permuted by pi
MASK = "attention_mask"       # (batch, tokens) int64, optional
TOKEN_IDS = "input_ids"       # (batch, tokens) int64: only a plain baseline server accepts these
OUTPUT = "output"             # permuted logits (pi_c) or hidden states (pi)

#: Default request bound: 64 MiB covers a 16 x 512 x 2048 float32 batch.
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DEFAULT_LIMITS = WireLimits(max_header_bytes=64 << 10, max_payload_bytes=DEFAULT_MAX_REQUEST_BYTES,
                            max_arrays=4, max_ndim=3)


def request_limits(max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> WireLimits:
    """The wire limits of a request frame whose payload may reach ``max_request_bytes``: the
    server's ``--max-request-mib``, and what a client must stay within to be heard.

    >>> request_limits(128 << 20).max_payload_bytes
    134217728
    """
    return dataclasses.replace(DEFAULT_LIMITS, max_payload_bytes=max_request_bytes)


#: Responses carry logits over the whole vocabulary; the client accepts larger frames.
RESPONSE_LIMITS = WireLimits(max_header_bytes=64 << 10, max_payload_bytes=1 << 30, max_arrays=4, max_ndim=3)
