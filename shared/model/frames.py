"""The frame encoder: CLIP's image tower run once per frame, returning frame and patch features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer
from torch import nn

from shared.model.errors import UnsupportedBackboneError


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame outputs of the image tower for a batch of videos or segments."""

    frame: torch.Tensor  # [B, T, D] frame embeddings (projected class token), not normalised
    patch: torch.Tensor  # [B, T, N, D] patch tokens after the final LayerNorm and the projection

    def to(self, device: torch.device | str) -> FrameFeatures:
        return FrameFeatures(frame=self.frame.to(device), patch=self.patch.to(device))

    def __getitem__(self, index: slice | torch.Tensor | list[int]) -> FrameFeatures:
        return FrameFeatures(frame=self.frame[index], patch=self.patch[index])

    def __len__(self) -> int:
        return self.frame.shape[0]


class FrameEncoder(nn.Module):
    """Wraps an open_clip ViT so one pass per frame yields both frame and patch embeddings."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise UnsupportedBackboneError(
                f"image tower {type(visual).__name__} is not supported: PIG needs the patch tokens "
                "of an open_clip VisionTransformer; choose a ViT model such as ViT-B-32"
            )
        self.visual = visual
        self.image_size = int(visual.image_size[0])
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Turn uint8 RGB frames [B, T, S, S, 3] (or [T, S, S, 3]) into normalised pixels [B, T, 3, S, S]."""
        pixels = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
        if pixels.ndim == 4:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != 5 or pixels.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames shaped [B, T, S, S, 3], got {tuple(pixels.shape)}")
        height, width = pixels.shape[2], pixels.shape[3]
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"frames are {height}x{width} but the model expects {self.image_size}x{self.image_size}; "
                "decode with size=model.config.image_size"
            )
        pixels = pixels.to(self.mean.device).permute(0, 1, 4, 2, 3).float().div_(255.0)  # [B, T, 3, S, S]
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> FrameFeatures:
        batch, frames = pixels.shape[:2]
        x = pixels.flatten(0, 1)  # [B*T, 3, S, S]

        x = self.visual._embeds(x)
        x = self.visual.transformer(x)
        pooled, tokens = self.visual._pool(x)  # [B*T, W], [B*T, N, W]
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj  # [B*T, D]
            tokens = tokens @ self.visual.proj  # [B*T, N, D]

        return FrameFeatures(
            frame=pooled.view(batch, frames, -1),  # [B, T, D]
            patch=tokens.view(batch, frames, tokens.shape[1], -1),  # [B, T, N, D]
        )
