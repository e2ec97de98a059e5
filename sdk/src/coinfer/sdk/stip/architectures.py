"""Per-architecture rules: which key permutes which axis of every parameter.

A rule maps a parameter name (regex, with the layer index as group ``layer``) to one
symbol per tensor axis, in PyTorch storage order. Symbols name index vectors of the keys:
``hidden`` (pi), ``output`` (pi_c), per layer ``q``, ``k``, ``v`` (projection outputs),
``o`` (attention output), ``qkv`` (GPT-2's fused projection), ``mlp``, and for
mixture-of-experts layers ``expert_mlp`` / ``expert_gate_up`` (one permutation per expert,
applied slice by slice along the leading expert axis); ``None`` leaves an axis alone.
Parameters listed in ``device`` stay with the data owner (the input embedding) and are
removed from the cloud model. A parameter that no rule matches makes
the transform refuse the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coinfer.sdk.errors import CoinferError

Axis = str | None


class UnsupportedModelError(CoinferError):
    """The transform does not know this architecture or one of its modules."""


@dataclass(frozen=True)
class Architecture:
    """How to transform one Hugging Face ``model_type``."""

    model_type: str
    rules: tuple[tuple[str, tuple[Axis, ...]], ...]
    device: tuple[str, ...]
    rotary: bool = False
    #: For models without an ``inputs_embeds`` entry: the device's embedding of raw inputs
    #: (numpy) and the cloud's forward from embeddings. ``None`` means token ids, a table
    #: lookup on the device, and ``model(inputs_embeds=...)`` in the cloud.
    device_embed: Callable[[Any, Any], Any] | None = None
    cloud_forward: Callable[..., Any] | None = None

    def match(self, name: str) -> tuple[tuple[Axis, ...], int | None] | None:
        """The axis symbols of parameter ``name`` and its layer index, or None if unknown."""
        for pattern, axes in self.rules:
            found = re.fullmatch(pattern, name)
            if found:
                layer = found.groupdict().get("layer")
                return axes, None if layer is None else int(layer)
        return None

    def is_device_side(self, name: str) -> bool:
        return any(re.fullmatch(pattern, name) for pattern in self.device)


def _linear(prefix: str, out: Axis, inp: Axis, bias: bool = True) -> list[tuple[str, tuple[Axis, ...]]]:
    rules: list[tuple[str, tuple[Axis, ...]]] = [(rf"{prefix}\.weight", (out, inp))]
    if bias:
        rules.append((rf"{prefix}\.bias", (out,)))
    return rules


def _conv1d(prefix: str, inp: Axis, out: Axis) -> list[tuple[str, tuple[Axis, ...]]]:
    """GPT-2's Conv1D stores its weight as (in, out)."""
    return [(rf"{prefix}\.weight", (inp, out)), (rf"{prefix}\.bias", (out,))]


def _table(pattern: str) -> list[tuple[str, tuple[Axis, ...]]]:
    """An embedding table added on the server (positions, token types): rows are not features."""
    return [(pattern, (None, "hidden"))]


def _norm(prefix: str) -> list[tuple[str, tuple[Axis, ...]]]:
    return [(rf"{prefix}\.weight", ("hidden",)), (rf"{prefix}\.bias", ("hidden",))]


_LAYER = r"(?P<layer>\d+)"


def _attention(prefix: str, q: str, k: str, v: str, o: str) -> list[tuple[str, tuple[Axis, ...]]]:
    """Q/K/V projections (hidden -> heads) and the output projection (heads -> hidden)."""
    return (_linear(rf"{prefix}\.{q}", "q", "hidden") + _linear(rf"{prefix}\.{k}", "k", "hidden")
            + _linear(rf"{prefix}\.{v}", "v", "hidden") + _linear(rf"{prefix}\.{o}", "hidden", "o"))


def _mlp(up: str, down: str) -> list[tuple[str, tuple[Axis, ...]]]:
    """The feed-forward pair: ``up`` (hidden -> intermediate) and ``down`` (back)."""
    return _linear(up, "mlp", "hidden") + _linear(down, "hidden", "mlp")


_LLAMA_LIKE_RULES = tuple(
    _attention(rf"model\.layers\.{_LAYER}\.self_attn", "q_proj", "k_proj", "v_proj", "o_proj")
    + _mlp(rf"model\.layers\.{_LAYER}\.mlp\.(gate|up)_proj", rf"model\.layers\.{_LAYER}\.mlp\.down_proj")
    + _norm(rf"model\.layers\.{_LAYER}\.(input|post_attention)_layernorm")
    + _norm(r"model\.norm")
    + _linear(r"lm_head", "output", "hidden")
    + _linear(r"score", "output", "hidden")
)

_GPT2_RULES = tuple(
    _norm(rf"transformer\.h\.{_LAYER}\.ln_[12]")
    + _conv1d(rf"transformer\.h\.{_LAYER}\.attn\.c_attn", "hidden", "qkv")
    + _conv1d(rf"transformer\.h\.{_LAYER}\.attn\.c_proj", "o", "hidden")
    + _conv1d(rf"transformer\.h\.{_LAYER}\.mlp\.c_fc", "hidden", "mlp")
    + _conv1d(rf"transformer\.h\.{_LAYER}\.mlp\.c_proj", "mlp", "hidden")
    + _norm(r"transformer\.ln_f")
    + _table(r"transformer\.wpe\.weight")
    + _linear(r"lm_head", "output", "hidden", bias=False)
    + _linear(r"score", "output", "hidden", bias=False)
)

_BERT = r"(?:bert\.)?"
_BERT_RULES = tuple(
    _table(rf"{_BERT}embeddings\.(position|token_type)_embeddings\.weight")
    + _norm(rf"{_BERT}embeddings\.LayerNorm")
    + _attention(rf"{_BERT}encoder\.layer\.{_LAYER}\.attention", r"self\.query", r"self\.key",
                 r"self\.value", r"output\.dense")
    + _norm(rf"{_BERT}encoder\.layer\.{_LAYER}\.attention\.output\.LayerNorm")
    + _mlp(rf"{_BERT}encoder\.layer\.{_LAYER}\.intermediate\.dense",
           rf"{_BERT}encoder\.layer\.{_LAYER}\.output\.dense")
    + _norm(rf"{_BERT}encoder\.layer\.{_LAYER}\.output\.LayerNorm")
    + _linear(rf"{_BERT}pooler\.dense", "hidden", "hidden")
    + _linear(r"classifier", "output", "hidden")
)

_MIXTRAL_RULES = (
    *(rule for rule in _LLAMA_LIKE_RULES if "mlp" not in rule[0]),
    (rf"model\.layers\.{_LAYER}\.mlp\.gate\.weight", (None, "hidden")),  # router: experts stay in place
    (rf"model\.layers\.{_LAYER}\.mlp\.experts\.gate_up_proj", (None, "expert_gate_up", "hidden")),
    (rf"model\.layers\.{_LAYER}\.mlp\.experts\.down_proj", (None, "hidden", "expert_mlp")),
)

_VIT = r"(?:vit\.)?"
_VIT_RULES = tuple(
    _attention(rf"{_VIT}layers\.{_LAYER}\.attention", "q_proj", "k_proj", "v_proj", "o_proj")
    + _norm(rf"{_VIT}layers\.{_LAYER}\.layernorm_(before|after)")
    + _mlp(rf"{_VIT}layers\.{_LAYER}\.mlp\.fc1", rf"{_VIT}layers\.{_LAYER}\.mlp\.fc2")
    + _norm(rf"{_VIT}layernorm")
    + _linear(rf"{_VIT}pooler\.dense", "hidden", "hidden")
    + _linear(r"classifier", "output", "hidden")
)


def _vit() -> Architecture:
    from coinfer.sdk.stip import vit

    return Architecture("vit", _VIT_RULES, device=(rf"{_VIT}embeddings\..*",),
                        device_embed=vit.device_embed, cloud_forward=vit.cloud_forward)


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("gpt2", _GPT2_RULES, device=(r"transformer\.wte\.weight",)),
    "bert": Architecture("bert", _BERT_RULES, device=(rf"{_BERT}embeddings\.word_embeddings\.weight",)),
    "llama": Architecture("llama", _LLAMA_LIKE_RULES, device=(r"model\.embed_tokens\.weight",), rotary=True),
    "mistral": Architecture("mistral", _LLAMA_LIKE_RULES, device=(r"model\.embed_tokens\.weight",),
                            rotary=True),
    "qwen2": Architecture("qwen2", _LLAMA_LIKE_RULES, device=(r"model\.embed_tokens\.weight",), rotary=True),
    "mixtral": Architecture("mixtral", _MIXTRAL_RULES, device=(r"model\.embed_tokens\.weight",),
                            rotary=True),
    "vit": _vit(),
}


def architecture_for(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"STIP does not support model_type '{model_type}'; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def layout_from_config(config: Any, output_size: int | None = None):
    """The :class:`~coinfer.sdk.stip.keys.ModelLayout` of a supported config."""
    from coinfer.sdk.stip.keys import ModelLayout

    arch = architecture_for(config)
    if arch.model_type == "gpt2":
        hidden, heads, layers = config.n_embd, config.n_head, config.n_layer
        kv_heads, intermediate = heads, config.n_inner or 4 * config.n_embd
    else:
        hidden, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        intermediate = config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    if arch.model_type == "bert" and getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"BERT with position_embedding_type '{config.position_embedding_type}' is not supported"
        )
    rotary_dim = 0
    if arch.rotary:
        factor = getattr(config, "partial_rotary_factor", None) or 1.0
        rotary_dim = int(head_dim * factor) // 2 * 2
    output_size = output_size or getattr(config, "vocab_size", None)
    if output_size is None:
        raise UnsupportedModelError(f"a {arch.model_type} model has no vocabulary: pass output_size "
                                    "(its number of labels, or hidden_size for the bare encoder)")
    return ModelLayout(
        hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        intermediate_size=intermediate, output_size=output_size, rotary_dim=rotary_dim,
        num_experts=getattr(config, "num_local_experts", 0) if arch.model_type == "mixtral" else 0,
    )
