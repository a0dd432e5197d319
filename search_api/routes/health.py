"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from search_api.routes.dependencies import require_api_key
from search_api.schemas import HealthStatus, Liveness
from search_api.state import Services

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Liveness, summary="The process is alive")
async def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    summary="The index is loaded and a real query was encoded",
    responses={503: {"model": HealthStatus}},
)
async def readyz(request: Request) -> JSONResponse:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not services.ready:
        body = HealthStatus(status="starting", detail="the model or the index is still loading")
        return JSONResponse(body.model_dump(), status_code=503)
    view = services.index.view
    mismatch = services.index.mismatch
    body = HealthStatus(
        status="ready" if mismatch is None else "model_mismatch",
        snapshot_id=view.snapshot_id,
        vector_count=view.vector_count,
        model_fingerprint=view.model.fingerprint,
        detail=mismatch,
    )
    return JSONResponse(body.model_dump(), status_code=200 if mismatch is None else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require_api_key)],
)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
