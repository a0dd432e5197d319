"""The PIG model: CLIP frame encoder, a selectable video head and the CLIP text tower."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from shared.device import autocast, resolve_device
from shared.model.backbone import create_backbone, tag_uses_quick_gelu
from shared.model.errors import UnknownModelError
from shared.model.frames import FrameEncoder, FrameFeatures
from shared.model.heads import HEAD_NAMES, HeadOptions, MeanPoolingHead, PIGHead, VideoHead, XPoolHead
from shared.model.text import TextEncoding, TextTower, TokenBatch

logger = logging.getLogger(__name__)

LOGIT_SCALE_INIT = math.log(100.0)
LOGIT_SCALE_MAX = math.log(200.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a PIG model's architecture (weights live elsewhere)."""

    model_name: str  # open_clip architecture, for example "ViT-B-32" or "pig-tiny"
    pretrained: str | None = None  # backbone weights source: a tag, a file path, or None (random)
    head: str = "pig"  # one of HEAD_NAMES
    head_options: HeadOptions = field(default_factory=HeadOptions)
    num_frames: int = 12  # T: frames sampled per video or segment
    image_size: int = 224  # S: frame side in pixels after resize and centre crop
    embed_dim: int = 512  # D: joint embedding width
    context_length: int = 77  # text positions; longer queries are truncated
    quick_gelu: bool = False  # QuickGELU activation, as OpenAI's CLIP weights were trained with

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        values = dict(data)
        values["head_options"] = HeadOptions(**values.get("head_options", {}))
        return cls(**values)


def build_head(name: str, clip_model: nn.Module, config: ModelConfig) -> VideoHead:
    """Create a head by name for a backbone."""
    if name == "meanp":
        return MeanPoolingHead()
    if name == "pig":
        return PIGHead(clip_model, config.num_frames, config.head_options)
    if name == "xpool":
        return XPoolHead(config.embed_dim, config.head_options)
    raise UnknownModelError(f"unknown head {name!r}: expected one of {', '.join(HEAD_NAMES)}")


class PIGModel(nn.Module):
    """Frame encoder + video head + text tower; scores are cosine similarities."""

    def __init__(self, clip_model: nn.Module, config: ModelConfig, precision: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.precision = precision
        self.frame_encoder = FrameEncoder(clip_model.visual)
        self.text_tower = TextTower(clip_model, config.context_length)
        self.head = build_head(config.head, clip_model, config)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # Frames and videos.

    def preprocess_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise uint8 RGB frames [B, T, S, S, 3] into pixels [B, T, 3, S, S] on the model's device."""
        return self.frame_encoder.preprocess(frames)

    def encode_frames(self, pixels: torch.Tensor) -> FrameFeatures:
        """Run the image tower once per frame: frame [B, T, D] and patch [B, T, N, D] features."""
        return self.frame_encoder(pixels)

    def video_from_features(self, features: FrameFeatures) -> torch.Tensor:
        """Return normalised, query-independent video vectors [B, D] (meanp and pig heads)."""
        return self.head.video_embedding(features)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode pixels [B, T, 3, S, S] to normalised video vectors [B, D]."""
        return self.video_from_features(self.encode_frames(pixels))

    def pseudo_query(self, features: FrameFeatures) -> torch.Tensor:
        """Return the pig head's normalised pseudo-query feature t_p [B, D]."""
        if not isinstance(self.head, PIGHead):
            raise TypeError(f"pseudo_query needs the pig head, this model has {self.config.head!r}")
        return self.head.pseudo_query(features)

    # Text.

    def tokenize(self, texts: list[str]) -> TokenBatch:
        return self.text_tower.tokenize(texts)

    def encode_tokens(self, tokens: TokenBatch) -> torch.Tensor:
        """Encode tokens to normalised text embeddings [B, D]; differentiable."""
        return self.text_tower.encode_tokens(tokens)

    def encode_text(self, texts: list[str]) -> TextEncoding:
        """Encode texts to normalised embeddings [B, D], reporting which were truncated."""
        return self.text_tower.encode(texts)

    def score(self, text_embeddings: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Score normalised queries [Q, D] against videos; returns [Q, B] for every head."""
        return self.head.score(text_embeddings, features)

    # Inference helpers used by the indexer and the search service.

    @torch.inference_mode()
    def embed_videos(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encode uint8 frames [B, T, S, S, 3] to float32 video vectors [B, D] for FAISS."""
        pixels = self.preprocess_frames(frames)
        with autocast(self.device, self.precision):
            vectors = self.encode_video(pixels)
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    @torch.inference_mode()
    def embed_queries(self, texts: list[str]) -> tuple[np.ndarray, tuple[bool, ...]]:
        """Encode query texts to float32 vectors [Q, D] and per-query truncation flags."""
        with autocast(self.device, self.precision):
            encoded = self.encode_text(texts)
        vectors = torch.nn.functional.normalize(encoded.embeddings.float(), dim=-1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32), encoded.truncated

    # Training support.

    def clamped_logit_scale(self) -> torch.Tensor:
        """Return exp(logit_scale) with the scale clamped at log(200)."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Split trainable parameters into pretrained CLIP weights ("clip") and new modules ("new")."""
        clip_ids = {id(p) for p in self.frame_encoder.parameters()} | {id(p) for p in self.text_tower.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"clip": [], "new": []}
        for parameter in self.parameters():
            if parameter.requires_grad:
                groups["clip" if id(parameter) in clip_ids else "new"].append(parameter)
        return groups

    def with_head(self, name: str) -> PIGModel:
        """Return a model that shares this backbone but uses another head.

        An `xpool` head built from a `pig` model reuses the trained interaction module, so it
        is the same cross-attention driven by the real query instead of the pseudo-query.
        """
        if name == self.config.head:
            return self
        other = PIGModel.__new__(PIGModel)
        nn.Module.__init__(other)
        other.config = replace(self.config, head=name)
        other.precision = self.precision
        other.frame_encoder = self.frame_encoder
        other.text_tower = self.text_tower
        other.logit_scale = self.logit_scale
        if name == "xpool" and isinstance(self.head, PIGHead):
            other.head = XPoolHead(self.config.embed_dim, self.config.head_options, self.head.interaction)
        elif name == "meanp":
            other.head = MeanPoolingHead()
        else:
            raise UnknownModelError(
                f"cannot derive head {name!r} from a {self.config.head!r} model without training; "
                "derive meanp from any model, or xpool from a pig model"
            )
        return other


def max_num_frames(head: str, num_selected_tokens: int, text_positions: int) -> int | None:
    """Return the most frames per segment a head accepts, or None when it has no limit.

    The pig head's pseudo-query generator reads 1 + 1 + T + K + 1 tokens through the text
    transformer, so T is bounded by the text positions (77 for CLIP).
    """
    if head != "pig":
        return None
    return text_positions - num_selected_tokens - 3


def check_num_frames(config: ModelConfig, num_frames: int, text_positions: int) -> None:
    """Raise ValueError, naming the allowed range, when `num_frames` does not fit the model."""
    if num_frames < 1:
        raise ValueError(f"frames per segment must be at least 1, got {num_frames}")
    limit = max_num_frames(config.head, config.head_options.num_selected_tokens, text_positions)
    if limit is not None and num_frames > limit:
        raise ValueError(
            f"frames per segment {num_frames} is too many for the pig head: its pseudo-query "
            f"generator fits at most {limit} frames ({text_positions} text positions minus "
            f"{config.head_options.num_selected_tokens} selected patch tokens and 3 special tokens); "
            f"use --frames {limit} or fewer"
        )


def build_model(
    model_name: str,
    pretrained: str | None = None,
    head: str = "pig",
    num_frames: int = 12,
    head_options: HeadOptions | None = None,
    context_length: int = 77,
    cache_dir: str | None = None,
    precision: str = "auto",
    quick_gelu: bool | None = None,
) -> PIGModel:
    """Create a PIG model around a freshly loaded open_clip backbone (on the CPU).

    `pretrained` is an open_clip tag, a weights file, or a PIG checkpoint directory whose
    backbone is reused with a new head. `quick_gelu=None` follows the weights: OpenAI's get
    QuickGELU, and a checkpoint keeps its own setting.
    """
    if head not in HEAD_NAMES:
        raise UnknownModelError(f"unknown head {head!r}: expected one of {', '.join(HEAD_NAMES)}")
    from shared.model.checkpoint import is_checkpoint_dir, load_backbone

    if pretrained is not None and is_checkpoint_dir(pretrained):
        clip_model, quick_gelu = load_backbone(pretrained, model_name)
    else:
        if quick_gelu is None:
            quick_gelu = tag_uses_quick_gelu(model_name, pretrained)
        clip_model = create_backbone(model_name, pretrained, cache_dir=cache_dir, quick_gelu=quick_gelu)
    options = head_options or HeadOptions()
    check_num_frames(
        ModelConfig(model_name=model_name, head=head, head_options=options),
        num_frames,
        clip_model.positional_embedding.shape[0],
    )
    config = ModelConfig(
        model_name=model_name,
        pretrained=pretrained,
        head=head,
        head_options=options,
        num_frames=num_frames,
        image_size=int(clip_model.visual.image_size[0]),
        embed_dim=int(clip_model.visual.output_dim),
        context_length=context_length,
        quick_gelu=quick_gelu,
    )
    model = PIGModel(clip_model, config, precision=precision)
    model.eval()
    return model


def load_model(
    checkpoint: str | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    head: str = "pig",
    device: str = "auto",
    precision: str = "auto",
    num_frames: int | None = None,
    cache_dir: str | None = None,
) -> PIGModel:
    """Load a PIG model from a checkpoint directory, or build one from an open_clip backbone.

    With `checkpoint`, the architecture, head and frame count come from its config.json and the
    other arguments except `device` and `precision` must be left unset (or agree).
    """
    torch_device = resolve_device(device)
    if checkpoint is not None:
        from shared.model.checkpoint import load_checkpoint

        if model_name is not None and model_name != "":
            raise ValueError(
                f"pass either a checkpoint ({checkpoint}) or a model name ({model_name}), not both"
            )
        model = load_checkpoint(checkpoint, device=str(torch_device), precision=precision)
        if num_frames is not None:
            check_num_frames(model.config, num_frames, model.text_tower.positional_embedding.shape[0])
        if num_frames is not None and num_frames != model.config.num_frames:
            logger.info("sampling %d frames per segment (checkpoint trained with %d)", num_frames, model.config.num_frames)
            model.config = replace(model.config, num_frames=num_frames)
        return model
    if not model_name:
        raise ValueError("no model given: pass a checkpoint directory, or a model name such as pig-tiny or ViT-B-32")
    model = build_model(
        model_name,
        pretrained,
        head=head,
        num_frames=num_frames if num_frames is not None else 12,
        cache_dir=cache_dir,
        precision=precision,
    )
    return model.to(torch_device)
