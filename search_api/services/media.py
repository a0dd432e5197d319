"""Video metadata, thumbnails and files, looked up by catalogued video id only."""

from __future__ import annotations

import asyncio
import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from shared.index_store import STATUS_DUPLICATE, STATUS_FAILED, STATUS_REMOVED
from shared.video import VideoError, decode_frames

from search_api.services.catalog_records import SegmentRecord, VideoRecord
from search_api.services.index import IndexService

logger = logging.getLogger(__name__)


class VideoNotFoundError(LookupError):
    """Raised when no catalogued video has the requested id."""

    def __init__(self, video_id: int) -> None:
        super().__init__(f"video {video_id} is not in the catalog")
        self.video_id = video_id


class VideoFileMissingError(FileNotFoundError):
    """Raised when a catalogued video's file is no longer on disk."""

    def __init__(self, video_id: int, path: str) -> None:
        super().__init__(
            f"file of video {video_id} is missing from {path}; re-run `indexer ingest` to "
            f"update the catalog"
        )
        self.video_id = video_id
        self.path = path


class VideoNotIndexedError(Exception):
    """Raised when a catalogued video has no media to serve because it is not indexed.

    The catalog keeps files that failed to index and files removed with `indexer remove`,
    so their metadata stays visible, but they have no decodable frames to serve.
    """

    def __init__(self, video: VideoRecord, original_status: str | None = None) -> None:
        super().__init__(_describe_not_indexed(video, original_status))
        self.video_id = video.video_id
        self.status = video.status
        self.path = video.path


def _describe_not_indexed(video: VideoRecord, original_status: str | None) -> str:
    prefix = f"video {video.video_id} ({video.path})"
    if video.status == STATUS_FAILED:
        reason = video.failure_reason or "no reason recorded"
        kind = f"{video.failure_kind}: " if video.failure_kind else ""
        return (
            f"{prefix} failed to index ({kind}{reason}), so it has no thumbnail or file to "
            f"serve; repair or replace the file and re-run `indexer ingest` on it"
        )
    if video.status == STATUS_REMOVED:
        return (
            f"{prefix} was removed from the index, so it has no thumbnail or file to serve; "
            f"re-run `indexer ingest` on the file to index it again"
        )
    if video.status == STATUS_DUPLICATE:
        return (
            f"{prefix} is a duplicate of video {video.duplicate_of}, which is "
            f"{original_status or 'not in the catalog'} instead of indexed; re-run "
            f"`indexer ingest` on both files"
        )
    return (
        f"{prefix} has status {video.status!r} instead of indexed; re-run `indexer ingest` "
        f"on the file"
    )


class ThumbnailDecodeError(RuntimeError):
    """Raised when no frame of an indexed video can be decoded for a thumbnail."""

    def __init__(self, video_id: int, path: Path, error: VideoError) -> None:
        super().__init__(f"decoding a frame of video {video_id} at {path} failed: {error}")
        self.video_id = video_id
        self.path = path
        self.error = error


class InvalidTimeError(ValueError):
    """Raised when a thumbnail time lies outside the video."""


def has_media(video: VideoRecord) -> bool:
    """Return whether the media endpoints serve this video's thumbnail and file.

    A duplicate is served from its own file, which is byte-identical to the indexed video's.
    """
    return video.is_indexed or video.status == STATUS_DUPLICATE


class MediaService:
    """Serve metadata, thumbnails and files of catalogued videos.

    Paths come from the catalog only; nothing here takes a path from a request.
    """

    def __init__(self, index: IndexService, thumbnail_size: int) -> None:
        self.index = index
        self.thumbnail_size = thumbnail_size
        # Decoding is blocking and may be slow, so it gets its own small pool.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pig-thumbnail")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def video(self, video_id: int) -> tuple[VideoRecord, list[SegmentRecord]]:
        """Return the video and its segments in time order, or raise VideoNotFoundError."""
        catalog = self.index.catalog

        def lookup() -> tuple[VideoRecord | None, list[SegmentRecord]]:
            video = VideoRecord.from_store(catalog.get_video(video_id))
            if video is None:
                return None, []
            rows = catalog.list_segments(video_id)
            return video, sorted(
                (SegmentRecord.from_store(row) for row in rows), key=lambda s: s.start_s
            )

        video, segments = await self.index.run_catalog(lookup)
        if video is None:
            raise VideoNotFoundError(video_id)
        return video, segments

    async def file_path(self, video_id: int) -> tuple[VideoRecord, Path]:
        """Return the catalogued file of a video, checked to exist on disk.

        Raises VideoNotIndexedError for a video that failed to index or was removed.
        """
        video, _ = await self.video(video_id)
        if not has_media(video):
            raise VideoNotIndexedError(video)
        path = Path(video.path)
        if not path.is_file():
            raise VideoFileMissingError(video_id, video.path)
        return video, path

    async def _timing_source(
        self, video: VideoRecord, segments: list[SegmentRecord]
    ) -> tuple[VideoRecord, list[SegmentRecord]]:
        """Return the indexed record whose duration and segments place a thumbnail of ``video``.

        A duplicate has no segments or probe of its own, so its original's are used.
        """
        if video.is_indexed:
            return video, segments
        if video.status != STATUS_DUPLICATE or video.duplicate_of is None:
            raise VideoNotIndexedError(video)
        try:
            original, original_segments = await self.video(video.duplicate_of)
        except VideoNotFoundError:
            raise VideoNotIndexedError(video) from None
        if not original.is_indexed:
            raise VideoNotIndexedError(video, original.status)
        return original, original_segments

    async def thumbnail(self, video_id: int, time_s: float | None) -> bytes:
        """Return a JPEG of the frame at ``time_s``, by default the middle of the first segment.

        Raises VideoNotIndexedError for a video that failed to index or was removed, and
        ThumbnailDecodeError when the file of an indexed video cannot be decoded.
        """
        requested, requested_segments = await self.video(video_id)
        video, segments = await self._timing_source(requested, requested_segments)
        path = Path(requested.path)
        if not path.is_file():
            raise VideoFileMissingError(video_id, requested.path)

        if time_s is None:
            if segments:
                time_s = (segments[0].start_s + segments[0].end_s) / 2.0
            else:
                time_s = (video.duration_s or 0.0) / 2.0
        # NaN compares false with everything, so it is rejected by name.
        if (
            not math.isfinite(time_s)
            or time_s < 0
            or (video.duration_s is not None and time_s > video.duration_s)
        ):
            raise InvalidTimeError(
                f"t must be between 0 and {video.duration_s} seconds for video {video_id}, "
                f"got {time_s}"
            )

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._encode_jpeg, path, time_s)
        except VideoError as error:
            raise ThumbnailDecodeError(video_id, path, error) from error

    def _encode_jpeg(self, path: Path, time_s: float) -> bytes:
        frames = decode_frames(path, [time_s], self.thumbnail_size)  # [1, S, S, 3] uint8
        buffer = io.BytesIO()
        Image.fromarray(frames[0]).save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
