"""ASGI middleware: request ids, metrics, body size limit and CORS from the settings."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any, Callable

from fastapi import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.metrics import ServiceMetrics
from search_api.settings import ApiSettings

logger = logging.getLogger(__name__)

# Id of the request being served, for log messages; "-" outside a request.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Give every request an id, count it and time it by route template.

    A client may send its own ``X-Request-ID`` (1 to 64 letters, digits, dots, dashes or
    underscores); otherwise a random one is made. The id is echoed in the response.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _CLIENT_REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        request_id = request_id or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        status_code = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:  # noqa: BLE001 - the last handler before the server
            self.metrics.errors.labels(kind="internal").inc()
            logger.exception(
                "request %s %s %s failed: %s", request_id, scope["method"], scope["path"], error
            )
            if response_started:
                raise
            response = JSONResponse(
                {"detail": "internal error; the server log has the details",
                 "request_id": request_id},
                status_code=500,
            )
            await response(scope, receive, send_with_id)
        finally:
            route_label = _route_label(scope)
            self.metrics.requests.labels(
                route=route_label, method=scope["method"], status=str(status_code)
            ).inc()
            self.metrics.request_latency.labels(route=route_label).observe(
                time.perf_counter() - started
            )
            request_id_var.reset(token)


def _route_label(scope: Scope) -> str:
    """Return the route template of a served request, or "unmatched".

    FastAPI's own routes put themselves in the scope. Plain Starlette routes, such as /docs
    and /openapi.json, only leave their endpoint, so the template is looked up by it.
    """
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for candidate in getattr(app, "routes", ()):
            if getattr(candidate, "endpoint", None) is endpoint:
                return str(getattr(candidate, "path", "unmatched"))
            if isinstance(candidate, Mount) and candidate.app is endpoint:
                # One label for every file under a mount, such as the docs' scripts.
                return f"{candidate.path}/{{path}}"
    return "unmatched"


class LifespanErrorMiddleware:
    """Report a known start-up error as its one-line message instead of a traceback.

    Starlette puts the whole traceback into the ``lifespan.startup.failed`` message, which
    uvicorn logs. When the lifespan stored a message (``get_message`` returns it), that
    message replaces the traceback.
    """

    def __init__(self, app: ASGIApp, get_message: Callable[[], str | None]) -> None:
        self.app = app
        self.get_message = get_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short_failure(message: Message) -> None:
            known = self.get_message()
            if message["type"] == "lifespan.startup.failed" and known:
                message = {**message, "message": known}
            await send(message)

        await self.app(scope, receive, send_short_failure)


class BodySizeLimitMiddleware:
    """Reject request bodies larger than ``max_body_bytes`` with 413.

    A declared Content-Length over the limit is rejected before the app runs. A body sent
    without one (chunked) is counted as it is read, and reading past the limit raises an
    HTTPException(413) inside the app.
    """

    def __init__(self, app: ASGIApp, get_settings: Callable[[], ApiSettings | None]) -> None:
        self.app = app
        self.get_settings = get_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.get_settings()
        if scope["type"] != "http" or settings is None:
            await self.app(scope, receive, send)
            return
        limit = settings.max_body_bytes
        message = f"request body is larger than the limit of {limit} bytes"

        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    response = JSONResponse({"detail": message}, status_code=413)
                    await response(scope, receive, send)
                    return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=message)
            return incoming

        await self.app(scope, limited_receive, send)


class SettingsCORSMiddleware:
    """CORS with the origins of the settings, which are known only once the app has started."""

    def __init__(self, app: ASGIApp, get_settings: Callable[[], ApiSettings | None]) -> None:
        self.app = app
        self.get_settings = get_settings
        self._cors: Any = None
        self._origins: list[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.get_settings()
        if scope["type"] != "http" or settings is None or not settings.cors_origins:
            await self.app(scope, receive, send)
            return
        if self._cors is None or self._origins != settings.cors_origins:
            self._origins = list(settings.cors_origins)
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=self._origins,
                allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Range"],
                expose_headers=["X-Request-ID", "Content-Range", "Accept-Ranges"],
            )
        await self._cors(scope, receive, send)
