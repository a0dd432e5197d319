"""Request and response bodies of the search service.

Limits that come from the settings (maximum ``top_k``, offset and query length) are checked
by ``search_api.services.search.validate_search_request``, because a static schema cannot
read them; the schema checks types and the fixed lower bounds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt


class SearchRequest(BaseModel):
    """Body of ``POST /search``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="Text to search for; must not be blank.")
    top_k: StrictInt = Field(default=10, description="Number of videos to return (1 to max_top_k).")
    offset: StrictInt = Field(default=0, description="Number of ranked videos to skip, for paging.")
    min_score: StrictFloat | None = Field(
        default=None, description="Drop videos whose best segment scores below this cosine."
    )
    path_prefix: str | None = Field(
        default=None,
        description="Keep only videos with a path (the catalogued one or a duplicate's) that "
        "starts with this.",
    )


class SearchHit(BaseModel):
    """One video of a search response, with its best-scoring segment."""

    video_id: int
    path: str = Field(
        description="Path of the file; with path_prefix, the first of the video's paths "
        "under the prefix."
    )
    duplicate_paths: list[str] = Field(
        description="The video's other paths: byte-identical files indexed once."
    )
    score: float = Field(description="Cosine similarity of the query and the best segment.")
    rank: int = Field(description="1-based rank over all results, offset included.")
    start_s: float = Field(description="Start of the best segment, in seconds.")
    end_s: float = Field(description="End of the best segment, in seconds.")
    duration_s: float | None = Field(description="Duration of the whole video, in seconds.")
    thumbnail_url: str
    file_url: str


class IndexVersion(BaseModel):
    """Identity of the index snapshot and model that served a response."""

    snapshot_id: str | None
    model_fingerprint: str


class SearchResponse(BaseModel):
    """Body returned by ``POST /search``."""

    results: list[SearchHit]
    total_videos: int = Field(description="Number of indexed videos in the served snapshot.")
    index: IndexVersion
    query_truncated: bool = Field(
        description="True when the query was longer than the text context and was cut."
    )
    took_ms: float


class SegmentInfo(BaseModel):
    """One indexed segment of a video."""

    segment_index: int = Field(description="0-based position of the segment in its video.")
    vector_id: int
    start_s: float
    end_s: float


class VideoDetail(BaseModel):
    """Body returned by ``GET /videos/{video_id}``."""

    video_id: int
    path: str
    duplicate_paths: list[str] = Field(
        description="Other paths of byte-identical files, indexed once under this video."
    )
    status: str = Field(
        description="indexed; failed (the file could not be decoded, see failure_reason); "
        "duplicate (indexed once under video duplicate_of); or removed."
    )
    failure_kind: str | None = Field(
        default=None, description="For status failed: the error kind, such as truncated."
    )
    failure_reason: str | None = Field(
        default=None, description="For status failed: why the indexer could not decode the file."
    )
    duplicate_of: int | None = Field(
        default=None, description="For status duplicate: id of the video with the same content."
    )
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    codec: str | None = None
    size_bytes: int
    segments: list[SegmentInfo]
    thumbnail_url: str | None = Field(
        description="Link to a JPEG thumbnail; null when the video failed to index or was "
        "removed, because it has no frame to show."
    )
    file_url: str | None = Field(
        description="Link to the video file; null when the video failed to index or was removed."
    )


class Liveness(BaseModel):
    """Body of ``/healthz``."""

    status: str


class HealthStatus(BaseModel):
    """Body of ``/readyz``."""

    status: str
    snapshot_id: str | None = None
    vector_count: int | None = None
    model_fingerprint: str | None = None
    detail: str | None = None
