"""The model developer's job: key a model, transform it, and split what each party receives.

``OUT/server`` (transformed weights, no input embedding) goes to the model server;
``OUT/user`` (tokenizer, embedding table, pi and pi_c) goes to registered data owners;
``OUT/developer.keys.npz`` (every key, including the per-layer ones) stays with the
developer. ``instances=N`` publishes N independently keyed copies (``OUT/instance-K/...``):
give each user or user group its own, and rotate by publishing anew.

The developer states where the weights come from (:class:`Protection`): with weights
anyone can download (``public-base``), a server matches what it receives against the
public model and reads the tokens back (``coinfer stip audit`` measures it), so publishing
them is refused. With ``private`` weights, one token still always gives the same row;
``local_blocks`` (the device runs the first blocks, so rows depend on context) and
``rotate`` (a secret orthogonal rotation of the residual stream, LLaMA family) are the
device-side mitigations the audit measures.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.sdk.artifact import Artifact, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import CoinferError, InvalidArgumentError, one_line
from coinfer.sdk.stip import ModelLayout, generate_keys, transform_model
from coinfer.sdk.stip.architectures import UnsupportedModelError, architecture_for
from coinfer.sdk.stip.owner import EMBEDDINGS, LOCAL_BLOCKS, PIXEL_EMBEDDING, USER_KEYS
from coinfer.sdk.stip.rotation import ROTATABLE, random_orthogonal, rotate_residual
from coinfer.sdk.stip.transform import strip_device_side

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PROVENANCES = ("private", "public-base")

#: Why weights anyone can download are not published, in one paragraph (CLI and errors).
PUBLIC_BASE_REFUSAL = (
    "refusing to publish public-base weights: a permutation keeps every row's values, so a server "
    "that downloads the same public model sorts each row it receives and names the token "
    "(vocabulary matching, arXiv 2505.18332); running the first blocks on the device does not help, "
    "because the server pushes every vocabulary token through the same public blocks and matches "
    "the sorted rows position by position, and a secret rotation does not help either, because "
    "norms and inner products between positions survive it and name the tokens the same way. "
    "'coinfer stip audit --provenance public-base' measures each of these on your model (see "
    "docs/stip.md for SmolLM2's numbers). Publish only weights a server cannot obtain "
    "(--provenance private), or keep inference on hardware you trust."
)


class PublishRefusedError(CoinferError):
    """The developer asked for a publication the audit shows to leak the users' tokens."""


@dataclass(frozen=True)
class Protection:
    """Where the weights come from and which device-side mitigations to apply.

    ``local_blocks``: decoder blocks the data owner runs before sending (LLaMA family), so
    no per-token fixed row leaves the device; ``rotate``: a secret orthogonal rotation of
    the residual stream (RMSNorm models), so sorted values stop matching.
    """

    provenance: str
    local_blocks: int = 0
    rotate: bool = False

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise InvalidArgumentError(f"provenance must be one of {', '.join(PROVENANCES)}, "
                                       f"got {self.provenance!r}")
        if self.local_blocks < 0:
            raise InvalidArgumentError(f"local_blocks must be >= 0, got {self.local_blocks}")

    def check(self, config: Any) -> None:
        """Refuse what leaks by construction, or what a model of this ``config`` cannot carry."""
        if self.provenance == "public-base":
            raise PublishRefusedError(PUBLIC_BASE_REFUSAL)
        model_type = config.model_type
        if (self.local_blocks or self.rotate) and model_type not in ROTATABLE:
            raise UnsupportedModelError(f"local blocks and rotation need a LLaMA-family model "
                                        f"({', '.join(ROTATABLE)}), got '{model_type}'")
        layers = int(getattr(config, "num_hidden_layers", 0))
        if self.local_blocks >= layers and self.local_blocks:
            raise InvalidArgumentError(f"local_blocks {self.local_blocks} leaves nothing for the server: "
                                       f"the model has {layers} blocks")
        rope = dict(getattr(config, "rope_parameters", None) or {})
        if self.local_blocks and rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
            raise UnsupportedModelError(f"local blocks need a fixed rotary table; rope_type "
                                        f"'{rope.get('rope_type')}' changes with the sequence length")


class ModelLoadError(CoinferError):
    """A model directory or server bundle that cannot be loaded: no or an unreadable
    configuration, missing weights, or weights that do not fit the model class."""


@dataclass(frozen=True)
class PublishedInstance:
    server: Path
    user: Path
    developer_keys: Path


def load_pretrained(model_dir: str | os.PathLike, gguf_file: str | None = None,
                    check: Callable[[Any], None] | None = None) -> Any:
    """Load a local Hugging Face model directory (or a GGUF file in it) with its config's class.

    ``check`` is called with the configuration before the weights are read (and may raise)."""
    import transformers

    model_dir = Path(model_dir)
    if gguf_file is None and not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir}: no config.json; expected a Hugging Face model directory")
    if gguf_file is not None and not (model_dir / gguf_file).is_file():
        raise ModelLoadError(f"{model_dir / gguf_file}: no such GGUF file")
    source = model_dir / (gguf_file or "config.json")
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir, gguf_file=gguf_file,
                                                         local_files_only=True)
    except (OSError, ValueError) as error:  # transformers' errors for unreadable or unknown configs
        raise ModelLoadError(f"{source}: not a readable model configuration: {one_line(error)}") from error
    architecture_for(config)  # refuse unsupported model types before loading weights
    if check is not None:
        check(config)
    names = getattr(config, "architectures", None) or []
    model_class = next((getattr(transformers, name) for name in names if hasattr(transformers, name)),
                       transformers.AutoModelForCausalLM if gguf_file else transformers.AutoModel)
    try:
        return model_class.from_pretrained(model_dir, gguf_file=gguf_file, local_files_only=True).eval()
    except (OSError, ValueError) as error:  # no weights file, or one that does not fit the config
        raise ModelLoadError(f"{model_dir}: cannot load the model's weights: {one_line(error)}") from error


def output_kind(model: Any) -> tuple[str, int]:
    """``("logits", size)`` for models with a head, ``("hidden", hidden_size)`` for encoders."""
    head = model.get_output_embeddings()
    if head is not None:
        return "logits", int(head.weight.shape[0])
    classifier = getattr(model, "classifier", None) or getattr(model, "score", None)
    if classifier is not None:
        return "logits", int(classifier.weight.shape[0])
    return "hidden", int(model.config.hidden_size)


def publish(model_dir: str | os.PathLike, out: str | os.PathLike, *, protection: Protection,
            instances: int = 1, overwrite: bool = False,
            gguf_file: str | None = None) -> list[PublishedInstance]:
    """Publish ``instances`` independently keyed copies of the model in ``model_dir``."""
    if instances < 1:
        raise InvalidArgumentError(f"instances must be >= 1, got {instances}")
    if protection.provenance == "public-base":
        raise PublishRefusedError(PUBLIC_BASE_REFUSAL)  # before loading the weights
    model = load_pretrained(model_dir, gguf_file, protection.check)
    out = Path(out)
    roots = [out] if instances == 1 else [out / f"instance-{k}" for k in range(instances)]
    return [publish_model(model, root, protection, model_dir=Path(model_dir), overwrite=overwrite)
            for root in roots]


def publish_model(model: Any, root: Path, protection: Protection, *, model_dir: Path | None = None,
                  overwrite: bool = False, rotation_seed: int | None = None) -> PublishedInstance:
    """Key, transform and write one instance of an in-memory ``model`` under ``root``.

    ``model_dir`` supplies the tokenizer files; ``rotation_seed`` is for tests only.
    """
    import numpy as np
    from safetensors.torch import save_file

    from coinfer.sdk.stip import device_embedding_table

    protection.check(model.config)
    kind, size = output_kind(model)
    base = (rotate_residual(model, random_orthogonal(model.config.hidden_size, rotation_seed))
            if protection.rotate else model)
    keys = generate_keys(ModelLayout.from_config(base.config, size))
    cloud = transform_model(base, keys)
    if protection.local_blocks:
        cloud = _without_first_blocks(cloud, protection.local_blocks)
    arch = architecture_for(model.config)
    info = {
        "input_kind": "tokens" if arch.device_embed is None else "pixels",
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "output_kind": kind,
        "output_size": size,
        "hidden_size": keys.layout.hidden_size,
        "max_positions": int(getattr(model.config, "max_position_embeddings", 0)
                             or getattr(model.config, "n_positions", 0)),
        "eos_token_id": getattr(model.config, "eos_token_id", None),
        "provenance": protection.provenance,
        "local_blocks": protection.local_blocks,
        "rotated": protection.rotate,
    }
    user_info = dict(info)
    if protection.local_blocks:
        user_info["local_block_shape"] = block_shape(base).to_metadata()
    with tempfile.TemporaryDirectory(prefix="coinfer-stip-") as temporary:
        scratch = Path(temporary)
        state = {name: tensor.contiguous() for name, tensor in cloud.state_dict().items()
                 if not arch.is_device_side(name)}
        save_file(state, str(scratch / "model.safetensors"))
        (scratch / "config.json").write_text(cloud.config.to_json_string())
        server = save_artifact(root / "server", Manifest("stip", "cloud-model", metadata=info),
                               {"model.safetensors": scratch / "model.safetensors",
                                "config.json": scratch / "config.json"}, overwrite=overwrite)
        keys.user.save(scratch / USER_KEYS)
        files: dict[str, Any] = {USER_KEYS: scratch / USER_KEYS}
        if arch.device_embed is None:
            np.save(scratch / EMBEDDINGS, device_embedding_table(base))
            files[EMBEDDINGS] = scratch / EMBEDDINGS
            if protection.local_blocks:
                # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
                np.savez(scratch / LOCAL_BLOCKS, **block_weights(base, protection.local_blocks))  # type: ignore[arg-type]
                files[LOCAL_BLOCKS] = scratch / LOCAL_BLOCKS
        else:
            from coinfer.sdk.stip.vit import device_parameters

            # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
            np.savez(scratch / PIXEL_EMBEDDING, **device_parameters(model))  # type: ignore[arg-type]
            files[PIXEL_EMBEDDING] = scratch / PIXEL_EMBEDDING
        if model_dir is not None:
            files |= {name: model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()}
        user = save_artifact(root / "user", Manifest("stip", "user-bundle", metadata=user_info), files,
                             overwrite=overwrite)
    os.chmod(user.file(USER_KEYS), 0o600)
    developer_keys = root / "developer.keys.npz"
    keys.save(developer_keys)
    return PublishedInstance(server.path, user.path, developer_keys)


def _without_first_blocks(cloud: Any, count: int) -> Any:
    """The server's model when the data owner runs the first ``count`` blocks: the same model
    type with the remaining blocks renumbered from 0 (the server never holds the first ones)."""
    config = copy.deepcopy(cloud.config)
    config.num_hidden_layers -= count
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[count:]
    prefix = "model.layers."
    arch = architecture_for(config)
    state = {}
    for name, tensor in cloud.state_dict().items():
        if arch.is_device_side(name):
            continue
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) < count:
                continue
            name = f"{prefix}{int(index) - count}.{rest}"
        state[name] = tensor
    shortened = type(cloud)(config).eval()
    shortened.load_state_dict(state, strict=False)
    strip_device_side(shortened)
    return shortened


def block_shape(model: Any) -> Any:
    from coinfer.sdk.stip.local_blocks import BlockShape

    config = model.config
    heads = config.num_attention_heads
    rotary = model.model.rotary_emb
    return BlockShape(hidden_size=config.hidden_size, num_heads=heads,
                      num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                      intermediate_size=config.intermediate_size, rms_eps=float(config.rms_norm_eps),
                      inv_freq=rotary.inv_freq.detach().double().cpu().numpy(),
                      attention_scaling=float(rotary.attention_scaling))


def block_weights(model: Any, count: int) -> dict[str, Any]:
    """The first ``count`` blocks' arrays, named as :mod:`coinfer.sdk.stip.local_blocks` expects."""
    names = {"input_layernorm.weight": "input_norm", "self_attn.q_proj.weight": "q",
             "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v", "self_attn.o_proj.weight": "o",
             "post_attention_layernorm.weight": "post_norm", "mlp.gate_proj.weight": "gate",
             "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down", "self_attn.q_proj.bias": "q_bias",
             "self_attn.k_proj.bias": "k_bias", "self_attn.v_proj.bias": "v_bias"}
    found = {}
    for i in range(count):
        for name, param in model.model.layers[i].named_parameters():
            if name not in names:
                raise UnsupportedModelError(f"local blocks do not know parameter '{name}' of block {i}")
            found[f"{i}.{names[name]}"] = param.detach().float().cpu().numpy()
    return found


def load_cloud_model(artifact: Artifact | str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Rebuild the transformed model from a server artifact (verified) for serving."""
    import transformers
    from safetensors.torch import load_file

    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact, capability="stip", kind="cloud-model")
    info = dict(artifact.manifest.metadata)
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(artifact.file("config.json"), Path(scratch) / "config.json")
        config = transformers.AutoConfig.from_pretrained(scratch, local_files_only=True)
    model_class = getattr(transformers, str(info.get("model_class")), None)
    if model_class is None:
        raise ModelLoadError(f"{artifact.path}: unknown model class {info.get('model_class')!r} in the "
                             f"manifest")
    arch = architecture_for(config)
    model = model_class(config).eval()
    missing, unexpected = model.load_state_dict(load_file(str(artifact.file("model.safetensors"))),
                                                strict=False)
    missing = [name for name in missing if not arch.is_device_side(name)]
    if missing or unexpected:
        raise ModelLoadError(f"{artifact.path}: weights do not fit {info['model_class']} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    strip_device_side(model)
    return model, info

