"""``GET /videos/{video_id}`` and its thumbnail and file."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from search_api.routes.dependencies import get_services, require_api_key
from search_api.routes.search import public_base_url
from search_api.schemas import SegmentInfo, VideoDetail
from search_api.responses import MediaFileResponse
from search_api.services.media import has_media
from search_api.services.search import file_url, thumbnail_url
from search_api.state import Services

router = APIRouter(prefix="/videos", tags=["videos"], dependencies=[Depends(require_api_key)])

# Catalog ids are SQLite INTEGER PRIMARY KEYs, so larger ids cannot exist and would make
# the SQLite driver raise OverflowError.
MAX_VIDEO_ID = 2**63 - 1
VideoId = Annotated[int, Path(ge=0, le=MAX_VIDEO_ID, description="Catalog id of the video.")]


@router.get("/{video_id}", response_model=VideoDetail, summary="Metadata and segments of a video")
async def get_video(
    video_id: VideoId, request: Request, services: Services = Depends(get_services)
) -> VideoDetail:
    video, segments = await services.media.video(video_id)
    base = public_base_url(request, services)
    # Failed and removed videos stay visible with their status, but have no media links.
    servable = has_media(video)
    return VideoDetail(
        video_id=video.video_id,
        path=video.path,
        duplicate_paths=list(video.duplicate_paths),
        status=video.status,
        failure_kind=video.failure_kind,
        failure_reason=video.failure_reason,
        duplicate_of=video.duplicate_of,
        duration_s=video.duration_s,
        width=video.width,
        height=video.height,
        fps=video.fps,
        codec=video.codec,
        size_bytes=video.size_bytes,
        segments=[
            SegmentInfo(
                segment_index=segment.segment_index,
                vector_id=segment.vector_id,
                start_s=segment.start_s,
                end_s=segment.end_s,
            )
            for segment in segments
        ],
        thumbnail_url=(
            thumbnail_url(services.links, base, video_id, segments[0] if segments else None)
            if servable
            else None
        ),
        file_url=file_url(services.links, base, video_id) if servable else None,
    )


@router.get(
    "/{video_id}/thumbnail",
    summary="A JPEG of the frame at a given second",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}},
        409: {"description": "The video failed to index or was removed; see the detail."},
    },
)
async def get_thumbnail(
    video_id: VideoId,
    t: float | None = Query(
        default=None,
        description="Time in seconds; default the middle of the video's first segment.",
    ),
    services: Services = Depends(get_services),
) -> Response:
    jpeg = await services.media.thumbnail(video_id, t)
    return Response(
        content=jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
    )


@router.get(
    "/{video_id}/file",
    summary="The video file, with HTTP range support for seeking",
    response_class=MediaFileResponse,
    responses={409: {"description": "The video failed to index or was removed; see the detail."}},
)
@router.head("/{video_id}/file", include_in_schema=False, response_class=MediaFileResponse)
async def get_file(
    video_id: VideoId, services: Services = Depends(get_services)
) -> MediaFileResponse:
    # The path comes from the catalog row of an integer id, never from the request.
    video, path = await services.media.file_path(video_id)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return MediaFileResponse(path, media_type=media_type)
