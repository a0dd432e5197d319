"""Video heads: how frame features become a video vector, or a score against a query.

- `meanp`: the normalised mean of the frame embeddings (two-tower, CLIP4Clip meanP).
- `pig`: a pseudo-query generated from the video drives a cross-attention over the frames,
  so the video vector is fine-grained yet independent of any real query.
- `xpool`: the same cross-attention driven by the real query; one forward per (query, video),
  for evaluation only.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shared.model.errors import QueryDependentHeadError
from shared.model.frames import FrameFeatures

HEAD_NAMES = ("meanp", "pig", "xpool")


@dataclass(frozen=True)
class HeadOptions:
    """Hyper-parameters of the `pig` and `xpool` heads (ignored by `meanp`)."""

    num_selected_tokens: int = 16  # K: patch tokens the informativeness selector keeps per video
    dropout: float = 0.1  # dropout inside the interaction's residual projection


def mean_frame_embedding(features: FrameFeatures) -> torch.Tensor:
    """Return the video-level token x_v [B, D]: the mean of the frame embeddings."""
    return features.frame.mean(dim=1)


class QueryPooling(nn.Module):
    """Single-head cross-attention from a query vector over a video's frame tokens.

    Query, key, value and output projections start as the identity, so an untrained module
    pools frames by their similarity to the query, which is a sound starting point.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm_mid = nn.LayerNorm(dim)
        self.residual_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(dim)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.eye_(projection.weight)
            nn.init.zeros_(projection.bias)

    def _finish(self, attended: torch.Tensor) -> torch.Tensor:
        attended = self.out_proj(attended)
        out = attended + self.dropout(self.residual_proj(self.norm_mid(attended)))
        return self.norm_out(out)

    def pool_paired(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Pool each video's tokens [B, L, D] with its own query [B, D]; returns [B, D]."""
        q = self.q_proj(self.norm_in(query))  # [B, D]
        normed = self.norm_in(tokens)
        k, v = self.k_proj(normed), self.v_proj(normed)  # [B, L, D]
        weights = torch.einsum("bd,bld->bl", q, k).div(math.sqrt(q.shape[-1])).softmax(dim=-1)  # [B, L]
        attended = torch.einsum("bl,bld->bd", weights, v)  # [B, D]
        return self._finish(attended)

    def pool_all_pairs(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Pool every video's tokens [B, L, D] with every query [Q, D]; returns [Q, B, D]."""
        q = self.q_proj(self.norm_in(query))  # [Q, D]
        normed = self.norm_in(tokens)
        k, v = self.k_proj(normed), self.v_proj(normed)  # [B, L, D]
        weights = torch.einsum("qd,bld->qbl", q, k).div(math.sqrt(q.shape[-1])).softmax(dim=-1)  # [Q, B, L]
        attended = torch.einsum("qbl,bld->qbd", weights, v)  # [Q, B, D]
        return self._finish(attended)


def interaction_tokens(features: FrameFeatures) -> torch.Tensor:
    """Keys and values of the interaction: [x_v, x_f[1..T]] as [B, 1 + T, D]."""
    video_token = mean_frame_embedding(features).unsqueeze(1)  # [B, 1, D]
    return torch.cat([video_token, features.frame], dim=1)


class VideoHead(nn.Module):
    """Interface shared by the heads."""

    name: str = ""
    query_dependent: bool = False

    def video_embedding(self, features: FrameFeatures) -> torch.Tensor:
        """Return L2-normalised video vectors [B, D] that do not depend on any query."""
        raise NotImplementedError

    def score(self, text: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Return cosine scores [Q, B] of normalised query embeddings [Q, D] against videos."""
        return text @ self.video_embedding(features).t()


class MeanPoolingHead(VideoHead):
    """`meanp`: the two-tower baseline; the video vector is the normalised mean frame embedding."""

    name = "meanp"

    def video_embedding(self, features: FrameFeatures) -> torch.Tensor:
        return F.normalize(mean_frame_embedding(features), dim=-1)


class PseudoQueryGenerator(nn.Module):
    """A causal transformer, copied from CLIP's text tower, that writes a query from video tokens.

    Its input is [BOS] + Linear([x_v, x_f, selected patches]) + [learned query token], and the
    projected output at the last position is the pseudo-query feature t_p.
    """

    def __init__(self, clip_model: nn.Module, num_frames: int, num_selected: int) -> None:
        super().__init__()
        width = clip_model.token_embedding.weight.shape[1]  # W
        dim = clip_model.visual.output_dim  # D
        self.sequence_length = 1 + 1 + num_frames + num_selected + 1
        if self.sequence_length > clip_model.positional_embedding.shape[0]:
            raise ValueError(
                f"pseudo-query sequence of {self.sequence_length} tokens exceeds the text context "
                f"of {clip_model.positional_embedding.shape[0]}; use fewer frames or selected tokens"
            )
        sot_id, eot_id = 49406, 49407  # CLIP's start- and end-of-text token ids
        self.transformer = copy.deepcopy(clip_model.transformer)
        self.positional_embedding = nn.Parameter(clip_model.positional_embedding.detach().clone())
        self.ln_final = copy.deepcopy(clip_model.ln_final)
        self.text_projection = copy.deepcopy(clip_model.text_projection)
        self.bos_embedding = nn.Parameter(clip_model.token_embedding.weight[sot_id].detach().clone())
        self.query_token = nn.Parameter(clip_model.token_embedding.weight[eot_id].detach().clone())
        self.input_proj = nn.Linear(dim, width)

    def forward(self, video_tokens: torch.Tensor) -> torch.Tensor:
        """Map video tokens [B, 1 + T + K, D] to the pseudo-query feature t_p [B, D], normalised."""
        batch = video_tokens.shape[0]
        body = self.input_proj(video_tokens)  # [B, 1 + T + K, W]
        bos = self.bos_embedding.expand(batch, 1, -1)
        query = self.query_token.expand(batch, 1, -1)
        x = torch.cat([bos, body, query], dim=1)  # [B, L, W]
        length = x.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = x.to(cast_dtype) + self.positional_embedding[:length].to(cast_dtype)
        mask = torch.full((length, length), float("-inf"), device=x.device).triu_(1)
        x = self.transformer(x, attn_mask=mask)
        pooled = self.ln_final(x[:, -1])  # [B, W]
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        else:
            pooled = pooled @ self.text_projection  # [B, D]
        return F.normalize(pooled, dim=-1)


def select_informative_patches(features: FrameFeatures, count: int) -> torch.Tensor:
    """Keep the `count` patch tokens most similar to the video-level token, over the whole video.

    The authors rank patches by the last ViT layer's class-token attention. This uses the cosine
    similarity between x_v and each projected patch token instead, which needs no attention maps.
    Returns [B, K, D].
    """
    patches = features.patch.flatten(1, 2)  # [B, T*N, D]
    count = min(count, patches.shape[1])
    video_token = F.normalize(mean_frame_embedding(features), dim=-1)  # [B, D]
    similarity = torch.einsum("bd,bnd->bn", video_token, F.normalize(patches, dim=-1))  # [B, T*N]
    top = similarity.topk(count, dim=1).indices  # [B, K]
    return torch.gather(patches, 1, top.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


class PIGHead(VideoHead):
    """`pig`: fine-grained interaction with a pseudo-query generated from the video itself."""

    name = "pig"

    def __init__(self, clip_model: nn.Module, num_frames: int, options: HeadOptions) -> None:
        super().__init__()
        self.options = options
        self.generator = PseudoQueryGenerator(clip_model, num_frames, options.num_selected_tokens)
        self.interaction = QueryPooling(clip_model.visual.output_dim, options.dropout)

    def pseudo_query(self, features: FrameFeatures) -> torch.Tensor:
        """Generate the normalised pseudo-query feature t_p [B, D] from the video alone."""
        selected = select_informative_patches(features, self.options.num_selected_tokens)  # [B, K, D]
        video_token = mean_frame_embedding(features).unsqueeze(1)  # [B, 1, D]
        return self.generator(torch.cat([video_token, features.frame, selected], dim=1))

    def video_embedding(self, features: FrameFeatures) -> torch.Tensor:
        pooled = self.interaction.pool_paired(self.pseudo_query(features), interaction_tokens(features))
        return F.normalize(pooled, dim=-1)


class XPoolHead(VideoHead):
    """`xpool`: the interaction driven by the real query; a single-tower reference."""

    name = "xpool"
    query_dependent = True

    def __init__(self, dim: int, options: HeadOptions, interaction: QueryPooling | None = None) -> None:
        super().__init__()
        self.options = options
        self.interaction = interaction if interaction is not None else QueryPooling(dim, options.dropout)

    def video_embedding(self, features: FrameFeatures) -> torch.Tensor:
        raise QueryDependentHeadError(
            "the xpool head has no query-independent video vector: it needs one forward pass per "
            "(query, video); use it through score() for evaluation, and index with meanp or pig"
        )

    def score(self, text: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        pooled = F.normalize(self.interaction.pool_all_pairs(text, interaction_tokens(features)), dim=-1)  # [Q, B, D]
        return torch.einsum("qd,qbd->qb", text, pooled)
