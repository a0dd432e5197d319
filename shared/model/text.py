"""CLIP text tower with truncation reporting and a context trimmed to the longest query."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from shared.model.errors import UnsupportedBackboneError


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of a batch of texts, padded with zeros to the full context length."""

    ids: torch.Tensor  # [B, C] int64, start-of-text first and end-of-text last in each row
    lengths: torch.Tensor  # [B] int64, tokens in each row including start- and end-of-text
    truncated: tuple[bool, ...]  # whether each text was cut to fit the context


@dataclass(frozen=True)
class TextEncoding:
    """Query embeddings and whether each query had to be truncated."""

    embeddings: torch.Tensor  # [B, D], L2-normalised
    truncated: tuple[bool, ...]


class TextTower(nn.Module):
    """The CLIP text encoder, run over only as many positions as the longest text needs.

    CLIP's text transformer uses a causal mask and pools at the end-of-text token, so the
    positions after the longest text's end-of-text token cannot change any pooled feature.
    Dropping them gives the same embeddings (up to float rounding) at a fraction of the cost.
    """

    def __init__(self, clip_model: nn.Module, context_length: int | None = None) -> None:
        super().__init__()
        if getattr(clip_model, "text_pool_type", "argmax") != "argmax":
            raise UnsupportedBackboneError(
                f"text pooling {clip_model.text_pool_type!r} is not supported; "
                "use an open_clip model with CLIP's end-of-text pooling (for example ViT-B-32)"
            )
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.context_length = min(context_length or clip_model.context_length, clip_model.context_length)
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.sot_token_id = self.tokenizer.sot_token_id
        self.eot_token_id = self.tokenizer.eot_token_id

    def tokenize(self, texts: list[str]) -> TokenBatch:
        """Tokenise texts, keeping end-of-text as the last token when a text is cut."""
        ids = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.long)
        truncated = []
        max_body = self.context_length - 2
        for row, text in enumerate(texts):
            body = self.tokenizer.encode(text)
            truncated.append(len(body) > max_body)
            tokens = [self.sot_token_id, *body[:max_body], self.eot_token_id]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            lengths[row] = len(tokens)
        return TokenBatch(ids=ids, lengths=lengths, truncated=tuple(truncated))

    def encode_tokens(self, tokens: TokenBatch, trim: bool = True) -> torch.Tensor:
        """Encode a token batch to L2-normalised embeddings [B, D]; differentiable."""
        device = self.token_embedding.weight.device
        width = int(tokens.lengths.max()) if trim and len(tokens.lengths) else self.context_length
        ids = tokens.ids[:, :width].to(device)  # [B, L]
        cast_dtype = self.transformer.get_cast_dtype()

        x = self.token_embedding(ids).to(cast_dtype)  # [B, L, W]
        x = x + self.positional_embedding[:width].to(cast_dtype)
        mask = torch.full((width, width), float("-inf"), device=device).triu_(1)
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)

        eot_positions = (tokens.lengths - 1).to(device)
        pooled = x[torch.arange(x.shape[0], device=device), eot_positions]  # [B, W]
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        elif self.text_projection is not None:
            pooled = pooled @ self.text_projection  # [B, D]
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: list[str]) -> TextEncoding:
        """Tokenise and encode texts; differentiable, so callers pick inference mode."""
        tokens = self.tokenize(texts)
        return TextEncoding(embeddings=self.encode_tokens(tokens), truncated=tokens.truncated)
