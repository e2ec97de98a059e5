"""The chat screen's conversation with a STIP model server, without a display.

The device is STIP's data owner (:class:`~coinfer.device.stip.STIPClient`, as in
``coinfer stip chat``): the prompt is tokenised, embedded and permuted here, the server
sees only permuted features, and the answer is un-permuted and sampled here. A phone or a
Pi loses its network often, so nothing the server or the bundle does may end the app:
:meth:`ChatSession.ask` answers every prompt with a :class:`ChatReply` that holds either
the text or one error line for the screen. The client is made on the first prompt (the
bundle holds the embedding table; no need to load it for a camera-only session) and made
again after a failure, so a fixed server or token file is picked up on the next try.

Example:

>>> ChatSession(None, None).ask("hello").error
'no STIP server configured: start the app with --stip-url and --stip-bundle'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coinfer.device.stip import STIPClient
from coinfer.sdk.errors import CoinferError, one_line
from coinfer.sdk.service import client_token

__all__ = ["ChatReply", "ChatSession"]


@dataclass(frozen=True)
class ChatReply:
    """The answer to one prompt: ``text``, or ``error`` (one line) when there is none."""

    prompt: str
    text: str = ""
    error: str | None = None


class ChatSession:
    """Prompts to one STIP server with one user bundle; :meth:`ask` never raises for I/O.

    ``timeout`` bounds each HTTP request (a generated token is one request).
    """

    def __init__(self, url: str | None, bundle: Path | None, token_file: Path | None = None, *,
                 max_new_tokens: int = 48, timeout: float = 60.0) -> None:
        self.url, self.bundle, self.token_file = url, bundle, token_file
        self.max_new_tokens, self.timeout = max_new_tokens, timeout
        self._client: STIPClient | None = None

    def ask(self, prompt: str) -> ChatReply:
        """Generate an answer to ``prompt`` through the server (greedy, up to ``max_new_tokens``)."""
        prompt = prompt.strip()
        if not prompt:
            return ChatReply(prompt, error="type a prompt first")
        if not self.url or self.bundle is None:
            return ChatReply(prompt, error="no STIP server configured: start the app with --stip-url and "
                                           "--stip-bundle")
        try:
            if self._client is None:
                token = client_token(self.token_file)
                self._client = STIPClient.create_from_bundle(self.bundle, self.url, token,
                                                             timeout=self.timeout)
            return ChatReply(prompt, text=self._client.generate_text(prompt, self.max_new_tokens).strip())
        except (CoinferError, OSError, ValueError, ImportError) as error:  # ImportError: no tokenizers
            self._client = None
            return ChatReply(prompt, error=one_line(error))
