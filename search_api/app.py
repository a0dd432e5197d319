"""The FastAPI application of the search service.

``uvicorn search_api.app:app`` serves ``app``, which reads its settings from the ``PIG_*``
environment variables when it starts. Importing this module loads no model and no index:
both load in the lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from pydantic_settings import SettingsError as SettingsSourceError
from starlette.exceptions import HTTPException as StarletteHTTPException

from search_api.metrics import ServiceMetrics
from search_api.middleware import (
    BodySizeLimitMiddleware,
    LifespanErrorMiddleware,
    RequestContextMiddleware,
    SettingsCORSMiddleware,
    request_id_var,
)
from search_api.routes import health, search, videos
from search_api.services.batcher import BatcherClosedError
from search_api.services.links import LinkSigner
from search_api.services.media import (
    InvalidTimeError,
    ThumbnailDecodeError,
    VideoFileMissingError,
    VideoNotFoundError,
    VideoNotIndexedError,
)
from search_api.services.search import RequestLimitError
from search_api.settings import ApiSettings, describe_settings_error
from search_api.state import StartupError, start_services, stop_services

logger = logging.getLogger(__name__)


class SettingsError(RuntimeError):
    """Raised at start-up when the settings are invalid; the message lists every problem."""


def load_settings() -> ApiSettings:
    """Read the settings from the environment, turning validation errors into one message."""
    try:
        return ApiSettings()
    except ValidationError as error:
        problems = "; ".join(describe_settings_error(error))
        raise SettingsError(f"invalid search service settings: {problems}") from None
    except SettingsSourceError as error:
        raise SettingsError(f"invalid search service settings: {error}") from None


def _configure_logging(settings: ApiSettings) -> None:
    # Under `uvicorn search_api.app:app` nothing configures the root logger for this package,
    # so the start-up lines (index and model loaded) would be dropped.
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("search_api").setLevel(settings.log_level.upper())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if app.state.settings is None:
        try:
            app.state.settings = load_settings()
        except SettingsError as error:
            # LifespanErrorMiddleware reports this message instead of a traceback.
            app.state.startup_error = str(error)
            raise
    settings = app.state.settings
    _configure_logging(settings)
    app.state.links = LinkSigner(settings.api_key, settings.link_lifetime_s)
    try:
        services = await start_services(settings, app.state.metrics, app.state.links)
    except StartupError as error:
        # Both launchers print this one line and exit non-zero (uvicorn exits with 3).
        app.state.startup_error = str(error)
        raise
    app.state.services = services
    try:
        yield
    finally:
        await stop_services(services)


def _validation_detail(
    field: str, message: str, location: str = "body"
) -> list[dict[str, object]]:
    return [{"loc": [location, field], "msg": message, "type": "value_error"}]


def _install_exception_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Map the services' exceptions to status codes, logging each with the request id."""

    def log_client_error(request: Request, status_code: int, detail: object) -> None:
        logger.warning(
            "request %s %s %s returned %d: %s",
            request_id_var.get(),
            request.method,
            request.url.path,
            status_code,
            detail,
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        log_client_error(request, 422, error.errors())
        return await request_validation_exception_handler(request, error)

    @app.exception_handler(RequestLimitError)
    async def on_limit_error(request: Request, error: RequestLimitError) -> JSONResponse:
        log_client_error(request, 422, error.message)
        return JSONResponse({"detail": _validation_detail(error.field, error.message)}, 422)

    @app.exception_handler(VideoNotFoundError)
    async def on_video_not_found(request: Request, error: VideoNotFoundError) -> JSONResponse:
        log_client_error(request, 404, str(error))
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(VideoFileMissingError)
    async def on_file_missing(request: Request, error: VideoFileMissingError) -> JSONResponse:
        metrics.errors.labels(kind="file_missing").inc()
        logger.error(
            "request %s: file of video %d is missing at %s",
            request_id_var.get(),
            error.video_id,
            error.path,
        )
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(InvalidTimeError)
    async def on_invalid_time(request: Request, error: InvalidTimeError) -> JSONResponse:
        log_client_error(request, 422, str(error))
        return JSONResponse({"detail": _validation_detail("t", str(error), "query")}, status_code=422)

    @app.exception_handler(VideoNotIndexedError)
    async def on_not_indexed(request: Request, error: VideoNotIndexedError) -> JSONResponse:
        # 409: the video exists in the catalog, but its status leaves no media to serve.
        log_client_error(request, 409, str(error))
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(ThumbnailDecodeError)
    async def on_decode_error(request: Request, error: ThumbnailDecodeError) -> JSONResponse:
        metrics.errors.labels(kind="decode").inc()
        logger.error(
            "request %s: decoding a thumbnail of indexed video %d at %s failed: %s",
            request_id_var.get(),
            error.video_id,
            error.path,
            error.error,
        )
        return JSONResponse(
            {"detail": f"could not decode a frame of video {error.video_id}: {error.error}"},
            status_code=500,
        )

    @app.exception_handler(BatcherClosedError)
    async def on_stopping(request: Request, error: BatcherClosedError) -> JSONResponse:
        log_client_error(request, 503, str(error))
        return JSONResponse({"detail": "the search service is shutting down"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code >= 500:
            metrics.errors.labels(kind=f"http_{error.status_code}").inc()
        log_client_error(request, error.status_code, error.detail)
        return JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the application; ``settings=None`` reads them from the environment at start-up."""
    metrics = ServiceMetrics()
    # Swagger UI (/docs) and ReDoc (/redoc) load their scripts from the installed package, so
    # the pages work on hosts without internet access.
    app = FastAPIOffline(
        title="PIG video search",
        summary="Text-to-video search over an index built by `indexer ingest`.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.services = None
    app.state.startup_error = None
    app.state.links = None

    app.include_router(search.router)
    app.include_router(videos.router)
    app.include_router(health.router)
    _install_exception_handlers(app, metrics)

    # Added last runs first: request ids and metrics wrap CORS, which wraps the body limit.
    app.add_middleware(BodySizeLimitMiddleware, get_settings=lambda: app.state.settings)
    app.add_middleware(SettingsCORSMiddleware, get_settings=lambda: app.state.settings)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.add_middleware(LifespanErrorMiddleware, get_message=lambda: app.state.startup_error)
    return app


app = create_app()
