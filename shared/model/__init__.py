"""The PIG model library: open_clip backbone, video heads, text tower and checkpoints."""

from shared.model.backbone import TINY_MODELS, create_backbone, default_cache_dir, register_model_configs
from shared.model.checkpoint import load_checkpoint, model_fingerprint, read_checkpoint_config, save_checkpoint
from shared.model.errors import (
    BackboneUnavailableError,
    CheckpointError,
    ModelError,
    QueryDependentHeadError,
    UnknownModelError,
    UnsupportedBackboneError,
)
from shared.model.frames import FrameEncoder, FrameFeatures
from shared.model.heads import HEAD_NAMES, HeadOptions
from shared.model.pig import ModelConfig, PIGModel, build_model, load_model
from shared.model.text import TextEncoding, TextTower, TokenBatch

__all__ = [
    "HEAD_NAMES",
    "TINY_MODELS",
    "BackboneUnavailableError",
    "CheckpointError",
    "FrameEncoder",
    "FrameFeatures",
    "HeadOptions",
    "ModelConfig",
    "ModelError",
    "PIGModel",
    "QueryDependentHeadError",
    "TextEncoding",
    "TextTower",
    "TokenBatch",
    "UnknownModelError",
    "UnsupportedBackboneError",
    "build_model",
    "create_backbone",
    "default_cache_dir",
    "load_checkpoint",
    "load_model",
    "model_fingerprint",
    "read_checkpoint_config",
    "save_checkpoint",
]
