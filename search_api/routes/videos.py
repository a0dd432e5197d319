"""``GET /videos/{video_id}`` and its thumbnail and file."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response

from search_api.routes.dependencies import get_services, require_api_key
from search_api.routes.search import public_base_url
from search_api.schemas import SegmentInfo, VideoDetail
from search_api.services.search import thumbnail_url
from search_api.state import Services

router = APIRouter(prefix="/videos", tags=["videos"], dependencies=[Depends(require_api_key)])


@router.get("/{video_id}", response_model=VideoDetail, summary="Metadata and segments of a video")
async def get_video(
    video_id: int, request: Request, services: Services = Depends(get_services)
) -> VideoDetail:
    video, segments = await services.media.video(video_id)
    base = public_base_url(request, services)
    default_thumbnail = (
        thumbnail_url(base, video_id, segments[0])
        if segments
        else f"{base}/videos/{video_id}/thumbnail"
    )
    return VideoDetail(
        video_id=video.video_id,
        path=video.path,
        status=video.status,
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
        thumbnail_url=default_thumbnail,
        file_url=f"{base}/videos/{video_id}/file",
    )


@router.get(
    "/{video_id}/thumbnail",
    summary="A JPEG of the frame at a given second",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def get_thumbnail(
    video_id: int,
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
    response_class=FileResponse,
)
async def get_file(video_id: int, services: Services = Depends(get_services)) -> FileResponse:
    # The path comes from the catalog row of an integer id, never from the request.
    # Starlette's FileResponse (1.x) answers Range requests with 206 and Content-Range.
    video, path = await services.media.file_path(video_id)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type)
