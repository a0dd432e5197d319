"""Response classes of the search service."""

from __future__ import annotations

import json

from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send


class MediaFileResponse(FileResponse):
    """A FileResponse whose Range errors are JSON like every other error of the service.

    Starlette's FileResponse (1.x) returns a text/plain 400 for a malformed Range header,
    and a text/plain 416 with ``Content-Range: bytes */SIZE`` for an unsatisfiable range.
    This class rewrites those two responses to ``{"detail": ...}`` bodies and
    keeps their status codes and Content-Range header.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error_start: Message | None = None
        error_text = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal error_start, error_text
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                error_start = message
                return
            if error_start is None:
                await send(message)
                return
            # The plain-text error body: buffer it, then send the JSON version.
            error_text += message.get("body", b"")
            if message.get("more_body", False):
                return
            await send_range_error(error_start, error_text.decode("utf-8", "replace"))

        async def send_range_error(start: Message, text: str) -> None:
            status = int(start["status"])
            if status == 416:
                detail = "requested range is not satisfiable"
                content_range = dict(start.get("headers", [])).get(b"content-range")
                if content_range is not None:
                    size = content_range.decode("latin-1").rpartition("/")[2]
                    detail += f"; the file is {size} bytes"
            else:
                detail = f"invalid Range header: {text or 'malformed'}"
            body = json.dumps({"detail": detail}).encode("utf-8")
            headers = [
                (name, value)
                for name, value in start.get("headers", [])
                if name not in (b"content-type", b"content-length")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await super().__call__(scope, receive, send_json_errors)
