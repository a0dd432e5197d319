"""``POST /search``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, status

from search_api.routes.dependencies import get_services, require_api_key
from search_api.schemas import SearchRequest, SearchResponse
from search_api.state import Services

router = APIRouter(tags=["search"], dependencies=[Depends(require_api_key)])


def public_base_url(request: Request, services: Services) -> str:
    """Return the URL prefix of links in responses, without a trailing slash."""
    configured = services.settings.public_base_url
    base = str(configured) if configured is not None else str(request.base_url)
    return base.rstrip("/")


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the videos that best match a text query",
    responses={
        422: {"description": "Invalid request; the message names the broken limit."},
        503: {"description": "Starting, stopping, or the index no longer matches the model."},
    },
)
async def search(
    body: SearchRequest,
    request: Request,
    services: Services = Depends(get_services),
) -> SearchResponse:
    mismatch = services.index.mismatch
    if mismatch is not None:
        # Searching would encode queries with one model and match them against vectors of
        # another, which returns meaningless rankings.
        raise HTTPException(status_code=status.HTTP_503_SERVICE_UNAVAILABLE, detail=mismatch)
    return await services.search.search(body, public_base_url(request, services))
