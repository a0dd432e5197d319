"""Loading of the open_clip backbone (image and text towers) by name and weights source."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import open_clip
import torch

from shared.model.errors import BackboneUnavailableError, UnknownModelError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
# Small architectures registered with open_clip for tests, the demo and the synthetic benchmark.
TINY_MODELS = tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.json")))

_registered = False


class _DropRandomInitWarning(logging.Filter):
    """Filter out open_clip's root-logger warning about random weights when they are intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def register_model_configs() -> None:
    """Register this package's small open_clip architectures once per process."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def default_cache_dir() -> str:
    """Return the folder open_clip downloads pretrained weights into (the Hugging Face hub cache)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
        return os.path.expanduser("~/.cache/huggingface/hub")


def tag_uses_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Return whether a pretrained tag's weights were trained with QuickGELU (OpenAI's CLIP were)."""
    if pretrained is None or Path(pretrained).expanduser().is_file():
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def create_backbone(
    model_name: str,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    quick_gelu: bool = False,
) -> torch.nn.Module:
    """Build an open_clip CLIP model with random weights, a pretrained tag or a local weights file.

    `pretrained` is either None (random initialisation), a path to a local weights file
    (`.safetensors`, or a torch checkpoint read with `weights_only=True`), or a pretrained tag
    that open_clip downloads once into `cache_dir`. `quick_gelu` forces the QuickGELU
    activation, which weights trained with it (OpenAI's) need to give their intended features.
    """
    register_model_configs()
    known = open_clip.list_models()
    if model_name not in known:
        tiny = ", ".join(TINY_MODELS)
        raise UnknownModelError(
            f"unknown model {model_name!r}: expected an open_clip architecture such as ViT-B-32 "
            f"or one of this product's small configurations ({tiny}); "
            "`python -c 'import open_clip; print(open_clip.list_models())'` lists them all"
        )

    if pretrained is None:
        logger.debug("building %s with random weights", model_name)
        # Random weights are intended here (a checkpoint or training fills them), so open_clip's
        # warning would only mislead.
        quiet = _DropRandomInitWarning()
        logging.getLogger().addFilter(quiet)
        try:
            return open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        finally:
            logging.getLogger().removeFilter(quiet)

    weights_path = Path(pretrained).expanduser()
    if weights_path.is_file():
        logger.info("building %s from local weights %s", model_name, weights_path)
        try:
            return open_clip.create_model(model_name, pretrained=str(weights_path), force_quick_gelu=quick_gelu)
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise BackboneUnavailableError(
                f"cannot load weights file {weights_path} into {model_name}: {error}; "
                "check that the file was saved for this architecture"
            ) from error
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    other_ways = (
        f"or a pretrained tag of {model_name} such as {', '.join(repr(tag) for tag in tags[:3])}"
        if tags
        else f"or no weights at all ({model_name} has no pretrained tags)"
    )
    if weights_path.is_dir():
        raise BackboneUnavailableError(
            f"{pretrained} is a directory but not a PIG checkpoint (it needs config.json and "
            f"model.safetensors); pass a checkpoint directory, an open_clip weights file, {other_ways}"
        )
    if pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained:
        raise BackboneUnavailableError(
            f"weights file or checkpoint directory {pretrained} not found; pass an existing path, "
            f"{other_ways}"
        )

    if pretrained not in tags:
        listed = ", ".join(tags) if tags else "none"
        raise BackboneUnavailableError(
            f"unknown pretrained tag {pretrained!r} for {model_name}; known tags: {listed}"
        )

    cache = cache_dir or default_cache_dir()
    logger.info("building %s with pretrained weights %r (cache %s)", model_name, pretrained, cache)
    try:
        return open_clip.create_model(
            model_name, pretrained=pretrained, cache_dir=cache_dir, force_quick_gelu=quick_gelu
        )
    except Exception as error:  # noqa: BLE001 - hub, network and file errors have no common base
        logger.debug("download of %s / %s failed: %s", model_name, pretrained, error)
        raise BackboneUnavailableError(
            f"cannot load pretrained weights {model_name!r} / {pretrained!r}: they are not in the "
            f"cache folder {cache} and the download failed ({type(error).__name__}). "
            "Either download the weights file on a machine with internet access and pass its path "
            "(--pretrained /path/to/open_clip_model.safetensors), or try the pipeline offline with "
            f"a trained --checkpoint DIR or the small configuration --model {TINY_MODELS[0]} "
            "(random weights, for testing only). Set HF_HUB_OFFLINE=1 to skip the download attempts."
        ) from error
