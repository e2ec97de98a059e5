"""The STIP data owner: tokenise, embed and permute locally; un-permute and sample locally.

Only permuted embeddings leave the device and only permuted outputs come back. Runs on
numpy and the standard library (plus ``tokenizers`` when text is given): no torch, no
transformers. Example::

    client = STIPClient.create_from_bundle("out/user", "http://127.0.0.1:8000", token)
    text = client.generate_text("The edge server", max_new_tokens=32)
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.sdk import wire
from coinfer.sdk.artifact import Artifact, load_artifact
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.stip import protocol
from coinfer.sdk.stip.keys import UserKeys
from coinfer.sdk.stip.local_blocks import BlockCache, BlockShape, LocalBlocks
from coinfer.sdk.stip.owner import (
    EMBEDDINGS,
    LOCAL_BLOCKS,
    PIXEL_EMBEDDING,
    USER_KEYS,
    OwnerBundleError,
    OwnerEncoder,
    load_arrays,
)
from coinfer.sdk.stip.sampling import GREEDY, SamplingOptions, TokenSampler
from coinfer.sdk.stip.vit import embed_pixels


class StipClientError(CoinferError):
    """The server refused a request or could not be reached, or the user bundle is unreadable."""


class STIPClient:
    """One data owner talking to one STIP model server."""

    def __init__(self, embeddings: np.ndarray | None, keys: UserKeys, url: str, token: str, *,
                 info: dict[str, Any], tokenizer_file: Path | None = None, timeout: float = 120.0,
                 pixel_embedding: dict[str, np.ndarray] | None = None,
                 local_blocks: LocalBlocks | None = None,
                 max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES) -> None:
        if (embeddings is None) == (pixel_embedding is None):
            raise StipClientError("give either a token embedding table or pixel-embedding parameters")
        try:
            self._encoder = None if embeddings is None else OwnerEncoder(embeddings, keys, local_blocks)
        except OwnerBundleError as error:
            raise StipClientError(str(error)) from error
        self._pixel_embedding = pixel_embedding
        self.keys = keys
        self.url = url.rstrip("/")
        self.info = info
        self.timeout = timeout
        self._limits = protocol.request_limits(max_request_bytes)  # match the server's --max-request-mib
        self._token = token
        self._tokenizer_file = tokenizer_file
        self._tokenizer: Any = None
        self.bytes_sent = 0
        self.bytes_received = 0

    @classmethod
    def create_from_bundle(cls, bundle: Artifact | str | os.PathLike, url: str, token: str,
                           timeout: float = 120.0,
                           max_request_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES) -> STIPClient:
        """Load a verified user bundle written by ``coinfer stip publish``."""
        if not isinstance(bundle, Artifact):
            bundle = load_artifact(bundle, capability="stip", kind="user-bundle")
        files = bundle.manifest.files
        info = dict(bundle.manifest.metadata)
        try:
            embeddings = load_arrays(bundle.file(EMBEDDINGS)) if EMBEDDINGS in files else None
            pixel_embedding = load_arrays(bundle.file(PIXEL_EMBEDDING)) if PIXEL_EMBEDDING in files else None
            blocks = (LocalBlocks(BlockShape.from_metadata(dict(info.get("local_block_shape") or {})),
                                  load_arrays(bundle.file(LOCAL_BLOCKS))) if LOCAL_BLOCKS in files else None)
        except CoinferError as error:
            raise StipClientError(str(error)) from error
        tokenizer = bundle.path / "tokenizer.json" if "tokenizer.json" in files else None
        return cls(embeddings, UserKeys.load(bundle.file(USER_KEYS)), url, token, info=info,
                   tokenizer_file=tokenizer, timeout=timeout, pixel_embedding=pixel_embedding,
                   local_blocks=blocks, max_request_bytes=max_request_bytes)

    def embed(self, token_ids: np.ndarray, cache: BlockCache | None = None,
              attention_mask: np.ndarray | None = None) -> np.ndarray:
        """What leaves the device for (batch, tokens) ids: ``x pi``, or, with local blocks, the
        residual stream after them, permuted (``cache`` carries their state across steps)."""
        if self._encoder is None:
            raise StipClientError("this bundle embeds pixels, not token ids")
        try:
            return self._encoder.encode(np.asarray(token_ids), cache, attention_mask)
        except OwnerBundleError as error:
            raise StipClientError(str(error)) from error

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Permuted patch embeddings of (batch, channels, H, W) images (ViT bundles)."""
        if self._pixel_embedding is None:
            raise StipClientError("this bundle embeds token ids, not pixels")
        return self.keys.permute_input(embed_pixels(self._pixel_embedding, pixels))

    def forward(self, inputs: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """The model's plain output for a batch of token ids (or images for ViT bundles).

        Returns logits, or hidden states for bare encoders.
        """
        mask = None if attention_mask is None else np.atleast_2d(attention_mask)
        embedded = self.embed_pixels(inputs) if self._pixel_embedding is not None else self.embed(
            np.atleast_2d(inputs), attention_mask=mask)
        arrays = {protocol.INPUTS: embedded}
        if attention_mask is not None:
            arrays[protocol.MASK] = np.atleast_2d(attention_mask).astype(np.int64)
        permuted = self._exchange("POST", protocol.FORWARD_PATH, arrays)
        if self.info.get("output_kind") == "hidden":
            return self.keys.unpermute_hidden(permuted)
        return self.keys.unpermute_output(permuted)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 sampling: SamplingOptions = GREEDY, stop_ids: Sequence[int] = ()) -> list[int]:
        """Decode with the server's KV cache: the prompt once, then one permuted row per token."""
        if self.info.get("output_kind") != "logits":
            raise StipClientError("generation needs a model with a language-model head")
        if not prompt_ids:
            raise StipClientError("the prompt is empty")
        sampler = TokenSampler(sampling)
        session = self._json("POST", protocol.SESSIONS_PATH)["session"]
        path = f"{protocol.SESSIONS_PATH}/{session}/step"
        generated: list[int] = []
        cache = None if self._encoder is None else self._encoder.new_cache()
        try:
            step_input = np.asarray([list(prompt_ids)])
            for _ in range(max_new_tokens):
                permuted = self._exchange("POST", path, {protocol.INPUTS: self.embed(step_input, cache)})
                # o'[j] = o[pi_c[j]]: choose in permuted space, then map the index; top-k/top-p
                # and greedy are order-independent, so nothing of size vocab is un-permuted.
                token = int(self.keys.output[sampler(permuted[0])])
                generated.append(token)
                if token in stop_ids:
                    break
                step_input = np.asarray([[token]])
        finally:
            self._json("DELETE", f"{protocol.SESSIONS_PATH}/{session}")
        return generated

    def tokenize(self, text: str) -> list[int]:
        return self._load_tokenizer().encode(text).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._load_tokenizer().decode(list(ids))

    def generate_text(self, prompt: str, max_new_tokens: int,
                      sampling: SamplingOptions = GREEDY) -> str:
        eos = self.info.get("eos_token_id")
        stops = [eos] if isinstance(eos, int) else list(eos or [])
        return self.detokenize(self.generate(self.tokenize(prompt), max_new_tokens, sampling, stops))

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self._tokenizer_file is None:
                raise StipClientError("this bundle has no tokenizer.json; pass token ids instead")
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self._tokenizer_file))
            self._tokenizer.no_padding()  # a prompt is one sequence; padding would be sent as tokens
        return self._tokenizer

    def _exchange(self, method: str, path: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        frame = wire.encode(wire.Message(wire.MessageType.REQUEST, {}, arrays), self._limits)
        body = self._request(method, path, frame, protocol.CONTENT_TYPE)
        try:
            message = wire.decode(body, protocol.RESPONSE_LIMITS)
        except wire.WireError as error:
            raise StipClientError(f"malformed response from {self.url}{path}: {error}") from error
        return message.arrays[protocol.OUTPUT]

    def _json(self, method: str, path: str) -> dict[str, Any]:
        return json.loads(self._request(method, path, None, "application/json"))

    def _request(self, method: str, path: str, body: bytes | None, content_type: str) -> bytes:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": content_type,
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise StipClientError(f"{method} {path}: HTTP {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            raise StipClientError(f"cannot reach the STIP server at {self.url}: {error.reason}") from error
        self.bytes_sent += len(body or b"")
        self.bytes_received += len(data)
        return data
