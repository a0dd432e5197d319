"""Retrieval evaluation of one or more heads on shared backbone features, with query-time cost.

Every head is scored from the same frame features, computed once per video:

- ``meanp`` and ``pig`` turn each video into one vector offline, so a query costs one text
  encode plus a FAISS flat inner-product search over N vectors.
- ``xpool`` pools each video's frames with the real query, so a query costs one text encode plus
  one interaction forward per (query, video) pair, N pairs per query.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from shared.device import autocast
from shared.model import FrameFeatures, PIGModel, UnknownModelError, load_model
from training.data import FrameCache, make_eval_loader
from training.datasets import CaptionDataset, DataSource
from training.metrics import RetrievalReport, format_metrics_row, retrieval_metrics

logger = logging.getLogger(__name__)

QUERY_INDEPENDENT_HEADS = ("meanp", "pig")
ALL_HEADS = ("meanp", "pig", "xpool")


@dataclass
class EncodedTestSet:
    """Backbone outputs of a test split, shared by every head."""

    frame: torch.Tensor  # [V, T, D] frame embeddings, float32 on the CPU
    video_vectors: dict[str, torch.Tensor]  # head name -> [V, D] normalised video vectors
    text: torch.Tensor  # [Q, D] normalised caption embeddings
    targets: list[int]  # [Q] video index of each caption


@dataclass
class HeadResult:
    """Metrics and measured query cost of one head."""

    head: str  # meanp, pig or xpool
    report: RetrievalReport  # both directions, DSL when requested
    query_ms: float | None  # median milliseconds per query over cost_videos videos
    cost_videos: int  # gallery size N of the cost measurement
    similarity: torch.Tensor | None = None  # [Q, V] text-to-video scores the metrics came from
    targets: list[int] | None = None  # [Q] video index of each caption


def _derive_heads(model: PIGModel, heads: list[str]) -> dict[str, PIGModel]:
    derived: dict[str, PIGModel] = {}
    for head in heads:
        if head not in ALL_HEADS:
            raise ValueError(f"unknown head {head!r}: expected one of {', '.join(ALL_HEADS)}")
        try:
            derived[head] = model.with_head(head)
        except UnknownModelError as error:
            logger.warning("skipping head %s: %s", head, error)
    return derived


@torch.inference_mode()
def encode_test_set(
    model: PIGModel,
    dataset: CaptionDataset,
    heads: list[str],
    batch_size: int = 16,
    num_workers: int = 0,
    cache: FrameCache | None = None,
) -> EncodedTestSet:
    """Decode and encode every test video once; compute the query-independent heads' vectors.

    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        return _encode_test_set(model, dataset, heads, batch_size, num_workers, cache)
    finally:
        model.train(was_training)


def _encode_test_set(
    model: PIGModel,
    dataset: CaptionDataset,
    heads: list[str],
    batch_size: int,
    num_workers: int,
    cache: FrameCache | None,
) -> EncodedTestSet:
    models = _derive_heads(model, heads)
    loader = make_eval_loader(dataset, model.config.num_frames, model.config.image_size, batch_size, num_workers, cache)
    frames: list[torch.Tensor] = []
    vectors: dict[str, list[torch.Tensor]] = {head: [] for head in models if head in QUERY_INDEPENDENT_HEADS}
    for batch_frames, _ in loader:
        pixels = model.preprocess_frames(batch_frames)
        with autocast(model.device, model.precision):
            features = model.encode_frames(pixels)
            for head in vectors:
                vectors[head].append(models[head].video_from_features(features).float().cpu())
        frames.append(features.frame.float().cpu())

    captions, targets = dataset.caption_targets()
    text_chunks = []
    for start in range(0, len(captions), 256):
        with autocast(model.device, model.precision):
            text_chunks.append(model.encode_text(captions[start : start + 256]).embeddings.float().cpu())
    return EncodedTestSet(
        frame=torch.cat(frames),
        video_vectors={head: torch.nn.functional.normalize(torch.cat(chunks), dim=-1) for head, chunks in vectors.items()},
        text=torch.nn.functional.normalize(torch.cat(text_chunks), dim=-1),
        targets=targets,
    )


def _frame_features(frame: torch.Tensor) -> FrameFeatures:
    """Wrap frame embeddings for the interaction, which reads no patch tokens.

    The patch field gets a zero-size [V, T, 0, D] tensor, so any head that needs patches fails
    loudly instead of reading placeholders.
    """
    empty_patch = frame.new_zeros(frame.shape[0], frame.shape[1], 0, frame.shape[2])  # [V, T, 0, D]
    return FrameFeatures(frame=frame, patch=empty_patch)


@torch.inference_mode()
def xpool_similarity(model: PIGModel, text: torch.Tensor, frame: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Score every caption against every video with the query-conditioned head: [Q, V]."""
    xpool = model.with_head("xpool")
    device = model.device
    columns = []
    for start in range(0, frame.shape[0], chunk):
        features = _frame_features(frame[start : start + chunk].to(device))
        with autocast(device, model.precision):
            columns.append(xpool.score(text.to(device), features).float().cpu())
    return torch.cat(columns, dim=1)


def head_similarity(model: PIGModel, encoded: EncodedTestSet, head: str) -> torch.Tensor:
    """Return the [Q, V] similarity matrix of one head."""
    if head == "xpool":
        return xpool_similarity(model, encoded.text, encoded.frame)
    return encoded.text @ encoded.video_vectors[head].t()


@torch.inference_mode()
def measure_query_ms(
    model: PIGModel,
    encoded: EncodedTestSet,
    head: str,
    num_videos: int,
    query: str = "a big red circle moves to the left",
    repeats: int = 40,
) -> float:
    """Time one query against ``num_videos`` videos and return the median milliseconds.

    The gallery repeats the test videos until it has ``num_videos`` entries. meanp and pig: one
    text encode and an exact FAISS inner-product search for the top 10. xpool: one text encode
    and the interaction forward over every (query, video) pair.
    """
    rows = torch.arange(num_videos) % encoded.frame.shape[0]
    if head == "xpool":
        gallery_frame = encoded.frame[rows].to(model.device)  # [N, T, D]
        xpool = model.with_head("xpool")

        def run_query() -> None:
            text = model.embed_queries([query])[0]
            with autocast(model.device, model.precision):
                xpool.score(torch.from_numpy(text).to(model.device), _frame_features(gallery_frame))
    else:
        vectors = np.ascontiguousarray(encoded.video_vectors[head][rows].numpy(), dtype=np.float32)  # [N, D]
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)

        def run_query() -> None:
            text = model.embed_queries([query])[0]
            index.search(text, min(10, num_videos))

    run_query()  # warm-up: first-call allocations and lazy initialisation
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_query()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        timings.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(timings))


def evaluate_model(
    model: PIGModel,
    dataset: CaptionDataset,
    heads: list[str] | None = None,
    dsl: bool = False,
    cost_videos: int | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    cache: FrameCache | None = None,
) -> list[HeadResult]:
    """Evaluate each head on shared features; measure query cost when ``cost_videos`` is set."""
    heads = heads or [model.config.head]
    was_training = model.training
    model.eval()
    try:
        available = list(_derive_heads(model, heads))
        encoded = encode_test_set(model, dataset, available, batch_size, num_workers, cache)
        results = []
        for head in available:
            similarity = head_similarity(model, encoded, head)
            report = retrieval_metrics(similarity, encoded.targets, dsl=dsl)
            query_ms = measure_query_ms(model, encoded, head, cost_videos) if cost_videos else None
            results.append(HeadResult(head=head, report=report, query_ms=query_ms, cost_videos=cost_videos or 0,
                                      similarity=similarity, targets=encoded.targets))
        return results
    finally:
        model.train(was_training)


def format_results(results: list[HeadResult], title: str) -> str:
    """Format head results as the table that ``pig-train evaluate`` prints."""
    lines = [title]
    for result in results:
        cost = f"query {result.query_ms:.2f} ms for {result.cost_videos} videos" if result.query_ms is not None else ""
        lines.append(f"[{result.head}] {cost}".rstrip())
        lines.append("  " + format_metrics_row("t2v", result.report.text_to_video))
        lines.append("  " + format_metrics_row("v2t", result.report.video_to_text))
        if result.report.text_to_video_dsl is not None:
            lines.append("  " + format_metrics_row("t2v DSL", result.report.text_to_video_dsl))
            lines.append("  " + format_metrics_row("v2t DSL", result.report.video_to_text_dsl))
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: Path | str,
    source: DataSource,
    heads: list[str] | None = None,
    dsl: bool = False,
    cost_videos: int | None = 1000,
    device: str = "auto",
    batch_size: int = 16,
    workers: int = 2,
    json_path: Path | None = None,
    print_results: bool = False,
) -> list[HeadResult]:
    """Load a checkpoint, evaluate the requested heads on a split and optionally print and save."""
    model = load_model(checkpoint=str(checkpoint), device=device)
    dataset = source.load()
    heads = heads or [model.config.head]
    results = evaluate_model(model, dataset, heads, dsl, cost_videos, batch_size, workers)
    missing = [head for head in heads if head not in {result.head for result in results}]
    if print_results:
        title = f"{dataset.name}: {len(dataset)} videos, checkpoint {checkpoint} (trained head {model.config.head})"
        print(format_results(results, title))
        for head in missing:
            print(f"[{head}] not available: a {model.config.head} checkpoint has no trained {head} weights")
    if json_path is not None:
        payload = {
            "checkpoint": str(checkpoint),
            "dataset": dataset.name,
            "videos": len(dataset),
            "heads": {
                result.head: {"metrics": result.report.as_dict(), "query_ms": result.query_ms, "cost_videos": result.cost_videos}
                for result in results
            },
        }
        Path(json_path).write_text(json.dumps(payload, indent=2))
    return results
