"""The model developer's job: key a model, transform it, and split what each party receives.

``OUT/server`` (transformed weights, no input embedding) goes to the model server;
``OUT/user`` (tokenizer, embedding table, pi and pi_c) goes to registered data owners;
``OUT/developer.keys.npz`` (every key, including the per-layer ones) stays with the
developer. ``instances=N`` publishes N independently keyed copies (``OUT/instance-K/...``):
give each user or user group its own, and rotate by publishing anew.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.sdk.artifact import Artifact, Manifest, load_artifact, save_artifact
from coinfer.sdk.errors import CoinferError, InvalidArgumentError, one_line
from coinfer.sdk.stip import ModelLayout, generate_keys, transform_model
from coinfer.sdk.stip.architectures import architecture_for
from coinfer.sdk.stip.transform import strip_device_side

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
USER_KEYS = "user.keys.npz"
EMBEDDINGS = "embeddings.npy"
PIXEL_EMBEDDING = "pixel_embedding.npz"


class ModelLoadError(CoinferError):
    """A model directory or server bundle that cannot be loaded: no or an unreadable
    configuration, missing weights, or weights that do not fit the model class."""


@dataclass(frozen=True)
class PublishedInstance:
    server: Path
    user: Path
    developer_keys: Path


def load_pretrained(model_dir: str | os.PathLike, gguf_file: str | None = None) -> Any:
    """Load a local Hugging Face model directory (or a GGUF file in it) with its config's class."""
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


def publish(model_dir: str | os.PathLike, out: str | os.PathLike, *, instances: int = 1,
            overwrite: bool = False, gguf_file: str | None = None) -> list[PublishedInstance]:
    """Publish ``instances`` independently keyed copies of the model in ``model_dir``."""
    if instances < 1:
        raise InvalidArgumentError(f"instances must be >= 1, got {instances}")
    model = load_pretrained(model_dir, gguf_file)
    out = Path(out)
    roots = [out] if instances == 1 else [out / f"instance-{k}" for k in range(instances)]
    return [_publish_one(model, Path(model_dir), root, overwrite) for root in roots]


def _publish_one(model: Any, model_dir: Path, root: Path, overwrite: bool) -> PublishedInstance:
    import numpy as np
    from safetensors.torch import save_file

    from coinfer.sdk.stip import device_embedding_table

    kind, size = output_kind(model)
    keys = generate_keys(ModelLayout.from_config(model.config, size))
    cloud = transform_model(model, keys)
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
    }
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
            np.save(scratch / EMBEDDINGS, device_embedding_table(model))
            files[EMBEDDINGS] = scratch / EMBEDDINGS
        else:
            from coinfer.sdk.stip.vit import device_parameters

            # numpy's savez stub has allow_pickle: bool beside **kwds, and mypy lets a **dict fill it.
            np.savez(scratch / PIXEL_EMBEDDING, **device_parameters(model))  # type: ignore[arg-type]
            files[PIXEL_EMBEDDING] = scratch / PIXEL_EMBEDDING
        files |= {name: model_dir / name for name in TOKENIZER_FILES if (model_dir / name).is_file()}
        user = save_artifact(root / "user", Manifest("stip", "user-bundle", metadata=info), files,
                             overwrite=overwrite)
    os.chmod(user.file(USER_KEYS), 0o600)
    developer_keys = root / "developer.keys.npz"
    keys.save(developer_keys)
    return PublishedInstance(server.path, user.path, developer_keys)


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

