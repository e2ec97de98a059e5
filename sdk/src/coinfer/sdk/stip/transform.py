"""F_theta -> F_theta': permute every weight, bias and norm parameter of a Hugging Face model.

The cloud model computes ``F'(x pi) = F(x) pi_c`` exactly (up to float rounding), so the
data owner permutes its embeddings and un-permutes the outputs, and the server sees
neither plaintext features nor original weights. Example::

    keys = generate_keys(ModelLayout.from_config(model.config))
    cloud_model = transform_model(model, keys)      # a new model; the original is untouched
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from coinfer.sdk.stip.architectures import Architecture, UnsupportedModelError, architecture_for
from coinfer.sdk.stip.keys import DeveloperKeys, LayerKeys, ModelLayout, StipKeyError


def transform_model(model: Any, keys: DeveloperKeys) -> Any:
    """Return the transformed cloud copy of ``model`` (a ``transformers`` PyTorch model).

    Refuses, with :class:`UnsupportedModelError`, any architecture or parameter it does
    not know, rather than produce a model that is silently wrong.
    """
    import torch

    arch = architecture_for(model.config)
    expected = ModelLayout.from_config(model.config, keys.layout.output_size)
    if expected != keys.layout:
        raise StipKeyError(f"keys were made for {keys.layout}, the model has {expected}")
    cloud = copy.deepcopy(model).eval()
    _untie_output_embedding(cloud)
    plan = _plan(cloud, arch, keys)
    with torch.no_grad():
        for param, indices in plan:
            param.data.copy_(_permute(param.data, indices))
    strip_device_side(cloud)
    return cloud


def strip_device_side(model: Any) -> None:
    """Take the data owner's parameters out of a cloud model.

    A token embedding table becomes a one-row zero placeholder; other device-side
    parameters (ViT's patch embedding) are zeroed, since the cloud forward skips them.
    """
    import torch

    arch = architecture_for(model.config)
    with torch.no_grad():
        if arch.device_embed is None:
            placeholder = torch.nn.Embedding(1, model.get_input_embeddings().weight.shape[1])
            placeholder.weight.zero_()
            model.set_input_embeddings(placeholder)
            return
        for name, param in model.named_parameters():
            if arch.is_device_side(name):
                param.zero_()


def device_embed(model: Any, inputs: np.ndarray) -> np.ndarray:
    """The data owner's embedding of raw inputs (token ids, or pixels for ViT), before pi."""
    arch = architecture_for(model.config)
    if arch.device_embed is not None:
        return arch.device_embed(model, inputs)
    return device_embedding_table(model)[inputs]


def cloud_forward(model: Any, inputs_embeds: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """Run a (transformed) model from embeddings, whatever its entry point."""
    arch = architecture_for(model.config)
    if arch.cloud_forward is not None:
        return arch.cloud_forward(model, inputs_embeds, attention_mask)
    return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def _permute(tensor: Any, indices: list[np.ndarray | None]) -> Any:
    """Gather ``tensor`` along every axis that has an index; a 2-D index is per leading slice."""
    import torch

    for axis, index in enumerate(indices):
        if index is None:
            continue
        if index.ndim == 2:  # one permutation per expert, along axis 0
            tensor = torch.stack([
                part.index_select(axis - 1, torch.as_tensor(row, device=tensor.device))
                for part, row in zip(tensor, index, strict=True)
            ])
        else:
            tensor = tensor.index_select(axis, torch.as_tensor(index, device=tensor.device))
    return tensor


def device_embedding_table(model: Any) -> np.ndarray:
    """The input embedding table the data owner needs (plain; the owner applies pi)."""
    return model.get_input_embeddings().weight.detach().cpu().numpy()


def _untie_output_embedding(model: Any) -> None:
    """A tied head would have to be permuted two ways at once; give the cloud its own copy."""
    import torch

    output, input_ = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is input_.weight:
        output.weight = torch.nn.Parameter(input_.weight.detach().clone())
        model.config.tie_word_embeddings = False


def _plan(model: Any, arch: Architecture, keys: DeveloperKeys) -> list[tuple[Any, list[np.ndarray | None]]]:
    plan, unknown = [], []
    for name, param in model.named_parameters():
        if arch.is_device_side(name):
            continue
        found = arch.match(name)
        if found is None:
            unknown.append(name)
            continue
        axes, layer = found
        if len(axes) != param.ndim:
            raise UnsupportedModelError(f"parameter '{name}' has {param.ndim} axes, the {arch.model_type} "
                                        f"rules expect {len(axes)}")
        indices = [None if symbol is None else _index(symbol, keys, layer) for symbol in axes]
        for axis, index in enumerate(indices):
            if index is not None and index.shape[-1] != param.shape[axis]:
                raise UnsupportedModelError(
                    f"parameter '{name}' axis {axis} has size {param.shape[axis]}, key '{axes[axis]}' has "
                    f"{index.shape[-1]}: the model's layout is not what its config says"
                )
        plan.append((param, indices))
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise UnsupportedModelError(
            f"the {arch.model_type} transform does not recognise parameter(s) {shown}; "
            "refusing rather than producing a wrong model"
        )
    return plan


def _index(symbol: str, keys: DeveloperKeys, layer: int | None) -> np.ndarray:
    if symbol == "hidden":
        return keys.user.hidden
    if symbol == "output":
        return keys.user.output
    if layer is None:
        raise UnsupportedModelError(f"key '{symbol}' needs a layer index")
    layer_keys: LayerKeys = keys.layers[layer]
    if symbol == "qkv":
        width = keys.layout.num_heads * keys.layout.head_dim
        return np.concatenate([layer_keys.q_out, width + layer_keys.k_out, 2 * width + layer_keys.v_out])
    if symbol == "expert_gate_up":  # gate and up halves share each expert's permutation
        width = keys.layout.intermediate_size
        return np.concatenate([layer_keys.mlp, width + layer_keys.mlp], axis=1)
    return {"q": layer_keys.q_out, "k": layer_keys.k_out, "v": layer_keys.v_out, "o": layer_keys.o_in,
            "mlp": layer_keys.mlp[0], "expert_mlp": layer_keys.mlp}[symbol]
