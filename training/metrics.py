"""Retrieval metrics over a query-by-video similarity matrix.

Conventions, the same for both directions:

- Ranks start at 1.
- Ties are counted pessimistically: a competitor whose score equals the ground truth's score ranks
  ahead of it. A constant similarity matrix therefore gives every query the worst rank, not the
  best. (The CLIP4Clip metrics code sorts with an unstable argsort and so counts ties in an
  arbitrary order.)
- R@K is the percentage of queries whose rank is at most K. MdR is the median rank, MnR the mean
  rank; both are 1-based.

A video may have several captions. The similarity matrix has one row per caption (query) and one
column per video, and ``targets[q]`` is the column index of caption ``q``'s video.

- Text-to-video: caption ``q``'s rank is ``1 + #{v != targets[q] : sim[q, v] >= sim[q, targets[q]]}``.
- Video-to-text: a video is retrieved once any of its captions is found, so its rank is that of its
  best-scoring caption among the captions of other videos:
  ``1 + #{q : targets[q] != v and sim[q, v] >= max_{q' : targets[q'] = v} sim[q', v]}``.
  Videos without any caption have no video-to-text rank and are left out of that direction.

DSL (dual softmax) rescales the matrix before ranking. Text-to-video uses
``sim * softmax(sim * 100, dim=0)``, the softmax taken over the query axis. Video-to-text applies
the same formula to the transposed matrix, so its softmax runs over the video axis. DSL uses the
statistics of the whole test set of queries, so its numbers are reported apart from the plain ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

DSL_TEMPERATURE = 100.0


@dataclasses.dataclass(frozen=True)
class RetrievalMetrics:
    """Recall at 1, 5 and 10 (percent), median and mean rank for one retrieval direction."""

    r1: float  # percentage of queries whose ground truth ranks first
    r5: float  # percentage of queries whose ground truth ranks in the top 5
    r10: float  # percentage of queries whose ground truth ranks in the top 10
    median_rank: float  # MdR, 1-based
    mean_rank: float  # MnR, 1-based
    num_queries: int  # number of ranked queries

    def as_dict(self) -> dict[str, float]:
        return {
            "R@1": self.r1,
            "R@5": self.r5,
            "R@10": self.r10,
            "MdR": self.median_rank,
            "MnR": self.mean_rank,
            "queries": float(self.num_queries),
        }


@dataclasses.dataclass(frozen=True)
class RetrievalReport:
    """Both directions for one similarity matrix, with the DSL variant when requested."""

    text_to_video: RetrievalMetrics  # captions as queries, videos as the gallery
    video_to_text: RetrievalMetrics  # videos as queries, captions as the gallery
    text_to_video_dsl: RetrievalMetrics | None = None  # after DSL, None unless requested
    video_to_text_dsl: RetrievalMetrics | None = None  # after DSL, None unless requested

    def as_dict(self) -> dict[str, dict[str, float]]:
        result = {"t2v": self.text_to_video.as_dict(), "v2t": self.video_to_text.as_dict()}
        if self.text_to_video_dsl is not None:
            result["t2v_dsl"] = self.text_to_video_dsl.as_dict()
        if self.video_to_text_dsl is not None:
            result["v2t_dsl"] = self.video_to_text_dsl.as_dict()
        return result


def _as_matrix(similarity: Any) -> np.ndarray:
    """Convert a numpy array or torch tensor to a float64 [Q, V] numpy array."""
    if hasattr(similarity, "detach"):
        similarity = similarity.detach().float().cpu().numpy()
    matrix = np.asarray(similarity, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"similarity must be a 2-D [queries, videos] matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("similarity contains NaN or infinite values; check the model outputs")
    return matrix


def _as_targets(targets: Any, num_queries: int, num_videos: int) -> np.ndarray:
    if targets is None:
        if num_queries != num_videos:
            raise ValueError(
                f"targets are required when the matrix is not square (got {num_queries} queries "
                f"and {num_videos} videos); pass each query's video index"
            )
        return np.arange(num_queries)
    if hasattr(targets, "detach"):
        targets = targets.detach().cpu().numpy()
    target_array = np.asarray(targets, dtype=np.int64)
    if target_array.shape != (num_queries,):
        raise ValueError(
            f"targets must have one video index per query, shape ({num_queries},), "
            f"got {target_array.shape}"
        )
    if num_queries and (target_array.min() < 0 or target_array.max() >= num_videos):
        raise ValueError(
            f"targets must be video indices in [0, {num_videos}), "
            f"got values from {target_array.min()} to {target_array.max()}"
        )
    return target_array


def metrics_from_ranks(ranks: np.ndarray) -> RetrievalMetrics:
    """Summarise 1-based ranks as R@1/5/10 (percent), MdR and MnR."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("cannot compute retrieval metrics over zero queries")
    return RetrievalMetrics(
        r1=float(np.mean(ranks <= 1) * 100.0),
        r5=float(np.mean(ranks <= 5) * 100.0),
        r10=float(np.mean(ranks <= 10) * 100.0),
        median_rank=float(np.median(ranks)),
        mean_rank=float(np.mean(ranks)),
        num_queries=int(ranks.size),
    )


def text_to_video_ranks(similarity: Any, targets: Any = None) -> np.ndarray:
    """Return each caption's 1-based rank of its video, ties counted pessimistically.

    ``similarity`` is [Q, V]; ``targets`` [Q] contains each caption's video index and defaults to
    the diagonal for a square matrix.
    """
    matrix = _as_matrix(similarity)
    num_queries, num_videos = matrix.shape
    target_array = _as_targets(targets, num_queries, num_videos)

    target_scores = matrix[np.arange(num_queries), target_array]  # [Q]
    # Every column scoring at least the target counts, the target itself included: that one
    # is the 1 of the 1-based rank.
    return np.sum(matrix >= target_scores[:, None], axis=1).astype(np.int64)


def video_to_text_ranks(similarity: Any, targets: Any = None) -> np.ndarray:
    """Return each captioned video's 1-based rank of its best caption, ties pessimistic.

    ``similarity`` is [Q, V] (captions by videos). Videos that no caption targets are skipped, so
    the result has one entry per captioned video, in video index order.
    """
    matrix = _as_matrix(similarity)
    num_queries, num_videos = matrix.shape
    target_array = _as_targets(targets, num_queries, num_videos)

    # Best score among each video's own captions; -inf marks a video without captions.
    best_own = np.full(num_videos, -np.inf)
    np.maximum.at(best_own, target_array, matrix[np.arange(num_queries), target_array])
    captioned = np.isfinite(best_own)

    own_caption = target_array[:, None] == np.arange(num_videos)[None, :]  # [Q, V]
    ahead = (matrix >= best_own[None, :]) & ~own_caption  # [Q, V]
    ranks = 1 + np.sum(ahead, axis=0)  # [V]
    return ranks[captioned].astype(np.int64)


def dual_softmax(similarity: Any, temperature: float = DSL_TEMPERATURE) -> np.ndarray:
    """Return ``sim * softmax(sim * temperature, axis=0)``, the softmax over the first axis."""
    matrix = _as_matrix(similarity)
    logits = matrix * temperature
    logits = logits - logits.max(axis=0, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=0, keepdims=True)
    return matrix * weights


def retrieval_metrics(similarity: Any, targets: Any = None, dsl: bool = False) -> RetrievalReport:
    """Compute text-to-video and video-to-text metrics for a [Q, V] similarity matrix.

    With ``dsl=True`` the report also carries both directions after DSL, kept in separate fields.
    """
    matrix = _as_matrix(similarity)
    target_array = _as_targets(targets, *matrix.shape)

    report = RetrievalReport(
        text_to_video=metrics_from_ranks(text_to_video_ranks(matrix, target_array)),
        video_to_text=metrics_from_ranks(video_to_text_ranks(matrix, target_array)),
    )
    if not dsl:
        return report

    t2v_dsl = dual_softmax(matrix)
    # Video-to-text DSL normalises over the videos: the same formula on the transposed matrix.
    v2t_dsl = dual_softmax(matrix.T).T
    return dataclasses.replace(
        report,
        text_to_video_dsl=metrics_from_ranks(text_to_video_ranks(t2v_dsl, target_array)),
        video_to_text_dsl=metrics_from_ranks(video_to_text_ranks(v2t_dsl, target_array)),
    )


def format_metrics_row(label: str, metrics: RetrievalMetrics) -> str:
    """Format one metrics line for CLI output."""
    return (
        f"{label:<14} R@1 {metrics.r1:6.2f}  R@5 {metrics.r5:6.2f}  R@10 {metrics.r10:6.2f}  "
        f"MdR {metrics.median_rank:7.1f}  MnR {metrics.mean_rank:8.2f}  (n={metrics.num_queries})"
    )
