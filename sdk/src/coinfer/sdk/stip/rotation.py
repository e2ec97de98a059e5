"""A secret orthogonal rotation of the residual stream of RMSNorm models (computational invariance).

Why: a permutation keeps each vector's multiset of values, so ``sort(x pi) == sort(x)``
names the embedding row (:mod:`coinfer.sdk.stip.attacks`). RMSNorm without its gain
commutes with any orthogonal ``Q`` (``rms(h Q) == rms(h)``), so, as in QuaRot and SliceGPT,
the gains fold into the linear layers that read the stream and the stream can live in
``h Q`` throughout: readers get ``W diag(g) Q``, writers ``Q^T W``, the embedding ``E Q``.
Sorted values stop matching; norms and inner products between positions still leak, which
the audit measures.

Example on a tiny random LLaMA (needs torch and transformers, like the transform itself)::

    rotated = rotate_residual(model, random_orthogonal(model.config.hidden_size))
    # rotated(inputs_embeds=E[ids] @ Q) gives model(input_ids=ids)'s logits
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

import numpy as np

from coinfer.sdk.stip.architectures import UnsupportedModelError

#: Model types whose blocks are pre-norm RMSNorm with the LLaMA parameter names.
ROTATABLE = ("llama", "mistral", "qwen2")


def random_orthogonal(size: int, seed: int | None = None) -> np.ndarray:
    """A Haar-random orthogonal (size, size) matrix; without ``seed`` drawn from ``os.urandom``.

    >>> q = random_orthogonal(4, seed=0)
    >>> bool(np.allclose(q @ q.T, np.eye(4)))
    True
    """
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    matrix, upper = np.linalg.qr(rng.standard_normal((size, size)))
    return matrix * np.sign(np.diag(upper))


def rotate_residual(model: Any, rotation: np.ndarray) -> Any:
    """A copy of ``model`` (LLaMA family) computing the same function on ``inputs_embeds @ rotation``.

    Every RMSNorm gain becomes 1 (folded into the next linear layers), so a server that
    later receives the stream cannot undo the rotation from the norms.
    """
    import torch

    if model.config.model_type not in ROTATABLE:
        raise UnsupportedModelError(f"the residual rotation needs an RMSNorm model ({', '.join(ROTATABLE)}); "
                                    f"got '{model.config.model_type}'")
    size = model.config.hidden_size
    if rotation.shape != (size, size) or not np.allclose(rotation @ rotation.T, np.eye(size), atol=1e-8):
        raise UnsupportedModelError(f"the rotation must be an orthogonal ({size}, {size}) matrix")
    rotated = copy.deepcopy(model).eval()
    q = torch.from_numpy(np.asarray(rotation, dtype=np.float64))
    head = rotated.get_output_embeddings()
    if head is not None and head.weight is rotated.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        rotated.config.tie_word_embeddings = False

    def read(linear: Any, gain: Any) -> None:       # input side: W diag(g) Q
        weight = linear.weight.data.double() * gain.double()[None, :]
        linear.weight.data.copy_((weight @ q).to(linear.weight.dtype))

    def write(linear: Any) -> None:                 # output side: Q^T W, bias b Q
        linear.weight.data.copy_((q.T @ linear.weight.data.double()).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.data.copy_((linear.bias.data.double() @ q).to(linear.bias.dtype))

    def unit(norm: Any) -> None:
        norm.weight.data.fill_(1.0)

    with torch.no_grad():
        table = rotated.get_input_embeddings().weight
        table.data.copy_((table.data.double() @ q).to(table.dtype))
        for layer in rotated.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
                read(linear, layer.input_layernorm.weight.data)
            for linear in (mlp.gate_proj, mlp.up_proj):
                read(linear, layer.post_attention_layernorm.weight.data)
            write(attention.o_proj)
            write(mlp.down_proj)
            unit(layer.input_layernorm)
            unit(layer.post_attention_layernorm)
        if head is not None:
            read(head, rotated.model.norm.weight.data)
        unit(rotated.model.norm)
    return rotated
