"""Video metadata, thumbnails and files, looked up by catalogued video id only."""

from __future__ import annotations

import asyncio
import io
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from shared.video import decode_frames

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


class InvalidTimeError(ValueError):
    """Raised when a thumbnail time lies outside the video."""


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
        """Return the catalogued file of a video, checked to exist on disk."""
        video, _ = await self.video(video_id)
        path = Path(video.path)
        if not path.is_file():
            raise VideoFileMissingError(video_id, video.path)
        return video, path

    async def thumbnail(self, video_id: int, time_s: float | None) -> bytes:
        """Return a JPEG of the frame at ``time_s``, by default the middle of the first segment."""
        video, segments = await self.video(video_id)
        path = Path(video.path)
        if not path.is_file():
            raise VideoFileMissingError(video_id, video.path)

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
        return await loop.run_in_executor(self.executor, self._encode_jpeg, path, time_s)

    def _encode_jpeg(self, path: Path, time_s: float) -> bytes:
        frames = decode_frames(path, [time_s], self.thumbnail_size)  # [1, S, S, 3] uint8
        buffer = io.BytesIO()
        Image.fromarray(frames[0]).save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
