"""Search: encode the query, search FAISS, group segments per video, filter and page."""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from shared.index_store import Catalog, Snapshot

from search_api.metrics import ServiceMetrics
from search_api.schemas import IndexVersion, SearchHit, SearchRequest, SearchResponse
from search_api.services.batcher import MicroBatcher
from search_api.services.catalog_records import SegmentRecord, VideoRecord, segments_by_vector_id
from search_api.services.encoder import QueryEncoder
from search_api.services.index import IndexService, IndexView
from search_api.services.links import LinkSigner
from search_api.settings import ApiSettings

logger = logging.getLogger(__name__)

# FAISS's own setting, 128,000 queries in faiss-cpu 1.15: below it a flat index scans its vectors
# once per query, which for one query was three times faster than the BLAS path (1M vectors,
# one thread). A micro-batch of 16 queries was four times faster with BLAS.
FAISS_BLAS_THRESHOLD = faiss.cvar.distance_compute_blas_threshold

# The first FAISS call fetches this many candidates per requested video, because long videos
# contribute several segments; later calls grow k by GROWTH_FACTOR until enough distinct
# videos pass the filters or the snapshot is exhausted.
CANDIDATES_PER_VIDEO = 4
MIN_CANDIDATES = 32
GROWTH_FACTOR = 4


class RequestLimitError(ValueError):
    """Raised when a search request breaks a limit from the settings; the response is 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def validate_search_request(request: SearchRequest, settings: ApiSettings) -> str:
    """Check the request against the configured limits and return the stripped query."""
    query = request.query.strip()
    if not query:
        raise RequestLimitError("query", "query must not be empty or only whitespace")
    if len(query) > settings.max_query_chars:
        raise RequestLimitError(
            "query",
            f"query must be at most {settings.max_query_chars} characters, got {len(query)}",
        )
    if not 1 <= request.top_k <= settings.max_top_k:
        raise RequestLimitError(
            "top_k", f"top_k must be between 1 and {settings.max_top_k}, got {request.top_k}"
        )
    if not 0 <= request.offset <= settings.max_offset:
        raise RequestLimitError(
            "offset", f"offset must be between 0 and {settings.max_offset}, got {request.offset}"
        )
    if request.min_score is not None and not math.isfinite(request.min_score):
        raise RequestLimitError("min_score", "min_score must be a finite number")
    return query


@dataclass(frozen=True)
class SearchJob:
    """One FAISS search of one query vector against one snapshot."""

    view: IndexView
    vector: np.ndarray  # [D] float32
    k: int


class SearchService:
    """Serve ``POST /search`` requests: encode, search, group by video, page."""

    def __init__(
        self,
        settings: ApiSettings,
        encoder: QueryEncoder,
        index: IndexService,
        links: LinkSigner,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.index = index
        self.links = links
        self._metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pig-faiss")
        # Concurrent queries share one FAISS call. From faiss_blas_threshold queries on, a flat
        # index computes their scores with one matrix-matrix product instead of Q scans.
        self._batcher: MicroBatcher[SearchJob, tuple[np.ndarray, np.ndarray]] = MicroBatcher(
            "faiss",
            self._search_batch,
            self.executor,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=0.0,
            on_batch=lambda size, _: metrics.search_batch_size.observe(size),
        )

    def start(self) -> None:
        logger.info(
            "FAISS searches micro-batches of %d or more queries with one BLAS product",
            self.settings.faiss_blas_threshold,
        )
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _search_batch(self, jobs: list[SearchJob]) -> list[tuple[np.ndarray, np.ndarray]]:
        # Runs on the FAISS thread. Jobs of one snapshot go into one call with the largest k.
        results: list[Any] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for position, job in enumerate(jobs):
            groups.setdefault(id(job.view), []).append(position)
        for positions in groups.values():
            snapshot = jobs[positions[0]].view.snapshot
            k = max(jobs[position].k for position in positions)
            queries = np.ascontiguousarray(
                np.stack([jobs[position].vector for position in positions]), dtype=np.float32
            )
            params = search_parameters(snapshot, self.settings)
            # OpenMP thread counts are per thread, so this thread sets its own for each call.
            # On a 2-core host one query over 1M vectors took 71 ms with 1 thread, 150 ms with 2.
            single = len(positions) == 1
            faiss.omp_set_num_threads(self.settings.faiss_threads if single else self.settings.faiss_batch_threads)
            # FAISS's BLAS threshold is process-wide, and this thread is the only code that
            # searches, so it sets the threshold for each call like the thread count above.
            blas = len(positions) >= self.settings.faiss_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = 1 if blas else FAISS_BLAS_THRESHOLD
            scores, ids = snapshot.search(queries, k, params=params)
            for row, position in enumerate(positions):
                job_k = jobs[position].k
                results[position] = (scores[row, :job_k], ids[row, :job_k])
        return results

    async def search(self, request: SearchRequest, base_url: str) -> SearchResponse:
        """Run one validated search request; ``base_url`` prefixes the returned URLs."""
        started = time.perf_counter()
        query = validate_search_request(request, self.settings)
        # Read the served view once: a reload or model swap during this request does not
        # affect it, so the query is encoded by the model that made the snapshot's vectors.
        view = self.index.view

        encode_started = time.perf_counter()
        encoded = await self.encoder.encode(query, view.model)
        self._metrics.stage_latency.labels(stage="encode").observe(
            time.perf_counter() - encode_started
        )

        hits = await self._ranked_videos(view, encoded.embedding, request)
        page = hits[request.offset : request.offset + request.top_k]
        results = []
        for position, (score, segment, video) in enumerate(page):
            path = matching_path(video, request.path_prefix)
            results.append(
                SearchHit(
                    video_id=video.video_id,
                    path=path,
                    duplicate_paths=[other for other in video.paths if other != path],
                    score=score,
                    rank=request.offset + position + 1,
                    start_s=segment.start_s,
                    end_s=segment.end_s,
                    duration_s=video.duration_s,
                    thumbnail_url=thumbnail_url(self.links, base_url, video.video_id, segment),
                    file_url=file_url(self.links, base_url, video.video_id),
                )
            )
        return SearchResponse(
            results=results,
            total_videos=view.total_videos,
            index=IndexVersion(
                snapshot_id=view.snapshot_id, model_fingerprint=view.model.fingerprint
            ),
            query_truncated=encoded.truncated,
            took_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def _ranked_videos(
        self, view: IndexView, vector: np.ndarray, request: SearchRequest
    ) -> list[tuple[float, SegmentRecord, VideoRecord]]:
        """Return every video up to offset + top_k that passes the filters, best first."""
        if view.snapshot is None or view.vector_count == 0:
            return []
        needed = request.offset + request.top_k
        k = min(view.vector_count, max(MIN_CANDIDATES, needed * CANDIDATES_PER_VIDEO))

        segments: dict[int, SegmentRecord] = {}
        videos: dict[int, VideoRecord] = {}
        while True:
            search_started = time.perf_counter()
            scores, vector_ids = await self._batcher.submit(SearchJob(view, vector, k))
            self._metrics.stage_latency.labels(stage="search").observe(
                time.perf_counter() - search_started
            )

            # FAISS pads with -1 when the index contains fewer than k vectors.
            valid = vector_ids >= 0
            scores, vector_ids = scores[valid], vector_ids[valid]

            metadata_started = time.perf_counter()
            new_ids = [int(v) for v in vector_ids if int(v) not in segments]
            if new_ids:
                new_segments, new_videos = await self.index.run_catalog(
                    _lookup_segments_and_videos, self.index.catalog, new_ids, set(videos)
                )
                segments.update(new_segments)
                videos.update(new_videos)
            self._metrics.stage_latency.labels(stage="metadata").observe(
                time.perf_counter() - metadata_started
            )

            ranked, below_min_score = _group_by_video(scores, vector_ids, segments, videos, request)
            exhausted = k >= view.vector_count or len(vector_ids) < k
            if len(ranked) >= needed or exhausted or below_min_score:
                return ranked
            k = min(view.vector_count, k * GROWTH_FACTOR)


def _lookup_segments_and_videos(
    catalog: Catalog, vector_ids: list[int], known_videos: set[int]
) -> tuple[dict[int, SegmentRecord], dict[int, VideoRecord]]:
    # Runs on the catalog thread: one hop for segment rows and the videos they belong to.
    segments = segments_by_vector_id(catalog, vector_ids)
    videos: dict[int, VideoRecord] = {}
    for segment in segments.values():
        if segment.video_id in known_videos or segment.video_id in videos:
            continue
        video = VideoRecord.from_store(catalog.get_video(segment.video_id))
        if video is not None:
            videos[segment.video_id] = video
    return segments, videos


def _group_by_video(
    scores: np.ndarray,
    vector_ids: np.ndarray,
    segments: dict[int, SegmentRecord],
    videos: dict[int, VideoRecord],
    request: SearchRequest,
) -> tuple[list[tuple[float, SegmentRecord, VideoRecord]], bool]:
    """Keep each video's best segment, apply the filters and sort by score.

    Returns the ranked list and whether the candidates reached scores below ``min_score``,
    in which case a larger search cannot add results.
    """
    best: dict[int, tuple[float, SegmentRecord, VideoRecord]] = {}
    below_min_score = False
    for score, vector_id in zip(scores.tolist(), vector_ids.tolist()):
        if request.min_score is not None and score < request.min_score:
            below_min_score = True
            continue
        segment = segments.get(vector_id)
        # A vector whose catalog row is gone (a video removed after this snapshot) is skipped.
        if segment is None:
            continue
        video = videos.get(segment.video_id)
        if video is None:
            continue
        if request.path_prefix is not None and matching_path(video, request.path_prefix) is None:
            continue
        current = best.get(video.video_id)
        if current is None or score > current[0]:
            best[video.video_id] = (float(score), segment, video)
    # Ties broken by video id so that equal scores always come back in the same order.
    ranked = sorted(best.values(), key=lambda hit: (-hit[0], hit[2].video_id))
    return ranked, below_min_score


def search_parameters(snapshot: Snapshot, settings: ApiSettings) -> faiss.SearchParameters | None:
    """Return the per-call FAISS parameters for the snapshot's index type, or None."""
    index_type = snapshot.manifest.index_type
    if index_type == "hnsw" and settings.faiss_ef_search is not None:
        return faiss.SearchParametersHNSW(efSearch=settings.faiss_ef_search)
    if index_type == "ivfpq" and settings.faiss_nprobe is not None:
        return faiss.SearchParametersIVF(nprobe=settings.faiss_nprobe)
    return None


def matching_path(video: VideoRecord, path_prefix: str | None) -> str | None:
    """Return the video's first path (catalogued path, then duplicates) under the prefix.

    Without a prefix this is the catalogued path; None means no path matches.
    """
    if path_prefix is None:
        return video.path
    return next((path for path in video.paths if path.startswith(path_prefix)), None)


def thumbnail_url(
    links: LinkSigner, base_url: str, video_id: int, segment: SegmentRecord | None
) -> str:
    """Return the link to a thumbnail of a segment's middle, or the default thumbnail."""
    path = f"/videos/{video_id}/thumbnail"
    if segment is None:
        return links.url(base_url, path)
    middle = (segment.start_s + segment.end_s) / 2.0
    return links.url(base_url, path, {"t": f"{middle:.3f}"})


def file_url(links: LinkSigner, base_url: str, video_id: int) -> str:
    return links.url(base_url, f"/videos/{video_id}/file")
