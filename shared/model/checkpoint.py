"""PIG checkpoints: weights in safetensors plus a JSON config, and a stable model fingerprint.

A checkpoint is a directory holding `config.json` and `model.safetensors`. Loading never
unpickles anything: safetensors holds only raw tensors, and the JSON holds only data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shared.device import resolve_device
from shared.model.backbone import create_backbone
from shared.model.errors import CheckpointError
from shared.model.pig import ModelConfig, PIGModel, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _state_tensors(model: PIGModel) -> dict[str, torch.Tensor]:
    """Return the model's tensors by name, contiguous, on the CPU, shared storage resolved."""
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}


def model_fingerprint(model: PIGModel) -> str:
    """Return a short, stable hash of the architecture config and every weight of the model.

    Float weights are hashed as float32, so a model loaded from float16 storage has the same
    fingerprint on every load and on every device.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(
    model: PIGModel,
    directory: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write `config.json` and `model.safetensors` into `directory`, replacing both atomically.

    `provenance` (training data, metrics, command) is stored as-is in the JSON. `dtype` sets the
    storage precision of float weights; "float16" halves the file for small demo checkpoints.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"invalid storage dtype {dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)

    tensors = _state_tensors(model)
    if dtype != "float32":
        tensors = {k: v.to(STORAGE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in tensors.items()}

    config = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "storage_dtype": dtype,
        "provenance": provenance or {},
    }

    # Write both files under temporary names first so a crash never leaves a half checkpoint.
    with tempfile.NamedTemporaryFile(dir=target, suffix=".safetensors.tmp", delete=False) as handle:
        weights_tmp = Path(handle.name)
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    # NamedTemporaryFile creates the file with mode 0600; give it the usual umask-based mode so
    # other users of a shared index volume (the search service's user) can read it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_tmp, 0o666 & ~umask)
    config_tmp = target / (CONFIG_FILE + ".tmp")
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(weights_tmp, target / WEIGHTS_FILE)
    os.replace(config_tmp, target / CONFIG_FILE)

    # The fingerprint of what a reader will load: float16 storage changes the weights.
    reloaded_fingerprint = model_fingerprint(load_checkpoint(target, device="cpu")) if dtype != "float32" else model_fingerprint(model)
    config["fingerprint"] = reloaded_fingerprint
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(config_tmp, target / CONFIG_FILE)
    logger.info("saved checkpoint %s (fingerprint %s)", target, reloaded_fingerprint)
    return target


def read_checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's `config.json`."""
    path = Path(directory)
    if path.is_file() and path.name == WEIGHTS_FILE:
        path = path.parent
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} not found; pass the folder that contains {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not config_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: it needs both {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint config {config_path} is not valid JSON: {error}") from error
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {config.get('format_version')!r}, "
            f"this release reads version {FORMAT_VERSION}"
        )
    return config


def load_checkpoint(
    directory: str | os.PathLike[str],
    device: str = "auto",
    precision: str = "auto",
) -> PIGModel:
    """Rebuild the model described by a checkpoint and load its weights (no unpickling)."""
    path = Path(directory)
    if path.is_file() and path.name == WEIGHTS_FILE:
        path = path.parent
    config_data = read_checkpoint_config(path)
    config = ModelConfig.from_dict(config_data["model"])

    # The backbone is built with random weights: every tensor comes from the checkpoint.
    model = build_model(
        config.model_name,
        pretrained=None,
        head=config.head,
        num_frames=config.num_frames,
        head_options=config.head_options,
        context_length=config.context_length,
        precision=precision,
        quick_gelu=config.quick_gelu,
    )
    model.config = config
    _load_weights(model, path)
    model.eval()
    return model.to(resolve_device(device))


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a directory with a checkpoint's config and weights files."""
    directory = Path(path).expanduser()
    return (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def load_backbone(directory: str | os.PathLike[str], model_name: str) -> tuple[torch.nn.Module, bool]:
    """Return the trained open_clip backbone of a checkpoint and whether it uses QuickGELU.

    Training from a checkpoint this way keeps its frame encoder and text tower and starts any
    head afresh: the ``pig`` head then copies the trained text transformer into its
    pseudo-query generator, as it does with pretrained CLIP weights.
    """
    path = Path(directory).expanduser()
    config = ModelConfig.from_dict(read_checkpoint_config(path)["model"])
    if config.model_name != model_name:
        raise CheckpointError(
            f"checkpoint {path} contains a {config.model_name} backbone, not {model_name}; "
            f"set the model name to {config.model_name} or choose another checkpoint"
        )
    clip_model = create_backbone(config.model_name, None, quick_gelu=config.quick_gelu)
    # The wrapper shares its frame encoder and text tower modules with clip_model, so loading
    # the checkpoint into the wrapper fills the backbone.
    _load_weights(PIGModel(clip_model, config), path)
    logger.info("building %s from the backbone of checkpoint %s", model_name, path)
    return clip_model, config.quick_gelu


def _load_weights(model: PIGModel, path: Path) -> None:
    config = model.config
    try:
        tensors = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"cannot read weights {path / WEIGHTS_FILE}: {error}") from error
    expected = model.state_dict()
    tensors = {k: v.to(expected[k].dtype) if k in expected and v.is_floating_point() else v for k, v in tensors.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its config ({config.model_name}, head {config.head}): "
            f"{len(missing)} missing tensors (first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    model.load_state_dict(tensors, strict=True)
