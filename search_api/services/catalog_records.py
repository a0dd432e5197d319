"""Service-side records of catalog rows, with the fields the API returns."""

from __future__ import annotations

from dataclasses import dataclass

from shared.index_store import STATUS_INDEXED, Catalog
from shared.index_store import SegmentRecord as StoredSegment
from shared.index_store import VideoRecord as StoredVideo


@dataclass(frozen=True)
class SegmentRecord:
    """One indexed segment: its vector id, its video and its time range in seconds."""

    vector_id: int
    video_id: int
    segment_index: int
    start_s: float
    end_s: float

    @classmethod
    def from_store(cls, row: StoredSegment) -> "SegmentRecord":
        return cls(
            vector_id=int(row.vector_id),
            video_id=int(row.video_id),
            segment_index=int(row.segment_index),
            start_s=float(row.start_s),
            end_s=float(row.end_s),
        )


@dataclass(frozen=True)
class VideoRecord:
    """One catalogued video with the metadata the API returns."""

    video_id: int
    path: str
    status: str
    duration_s: float | None
    width: int | None
    height: int | None
    fps: float | None
    codec: str | None
    size_bytes: int
    # Other files with byte-identical content, which the indexer recorded as duplicates.
    duplicate_paths: tuple[str, ...] = ()
    # For status "duplicate": the id of the indexed video with the same content.
    duplicate_of: int | None = None
    # For status "failed": the indexer's error kind (such as "truncated") and one-line reason.
    failure_kind: str | None = None
    failure_reason: str | None = None

    @property
    def is_indexed(self) -> bool:
        """True when the indexer decoded the video and stored its segments."""
        return self.status == STATUS_INDEXED

    @property
    def paths(self) -> tuple[str, ...]:
        """The catalogued path followed by the duplicates' paths."""
        return (self.path, *self.duplicate_paths)

    @classmethod
    def from_store(cls, row: StoredVideo | None) -> "VideoRecord | None":
        if row is None:
            return None
        return cls(
            video_id=int(row.id),
            path=row.path,
            status=row.status,
            duration_s=row.probe.duration,
            width=row.probe.width,
            height=row.probe.height,
            fps=row.probe.fps,
            codec=row.probe.codec,
            size_bytes=int(row.size),
            duplicate_paths=tuple(row.duplicate_paths),
            duplicate_of=None if row.duplicate_of is None else int(row.duplicate_of),
            failure_kind=row.failure_kind,
            failure_reason=row.failure_reason,
        )


def segments_by_vector_id(catalog: Catalog, vector_ids: list[int]) -> dict[int, SegmentRecord]:
    """Map vector ids to their segments; ids without a catalog row are left out."""
    rows = catalog.segments_for_vector_ids(vector_ids)
    return {vector_id: SegmentRecord.from_store(row) for vector_id, row in rows.items()}
