"""FastAPI dependencies shared by the routes: the loaded services and the API key check.

Both are coroutines on purpose: FastAPI runs plain functions in its thread pool, which would
add up to 40 threads under load for no work.
"""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from search_api.services.links import LinkSignatureError
from search_api.state import Services

_bearer = HTTPBearer(auto_error=False, description="The API key set in PIG_API_KEY.")


async def get_services(request: Request) -> Services:
    """Return the loaded services, or raise a 503 HTTPException while the service starts or stops."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not services.ready:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="the search service is not ready: the model or the index is still loading",
        )
    return services


async def require_api_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Raise an HTTPException unless the request is authorised (when an API key is set).

    A request is authorised by the bearer token, or, for a GET or HEAD without an
    Authorization header, by a signed link's ``exp`` and ``sig`` query parameters: a wrong
    signature gets 403 and an expired one 401.
    """
    settings = getattr(request.app.state, "settings", None)
    if settings is None or settings.api_key is None:
        return
    signature = request.query_params.get("sig")
    if credentials is None and signature is not None and request.method in ("GET", "HEAD"):
        _check_link_signature(request, signature)
        return

    expected = settings.api_key.get_secret_value().encode("utf-8")
    if credentials is None or credentials.scheme.lower() != "bearer":
        detail = "missing API key; send it as 'Authorization: Bearer <key>'"
    elif not secrets.compare_digest(credentials.credentials.encode("utf-8"), expected):
        detail = "invalid API key"
    else:
        return
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="pig-search"'},
    )


def _check_link_signature(request: Request, signature: str) -> None:
    signer = request.app.state.links
    # Links are signed over the path below the application's root path.
    path = request.url.path
    root_path = request.scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    try:
        signer.verify(path, request.query_params.get("exp", ""), signature)
    except LinkSignatureError as error:
        if error.expired:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=str(error),
                headers={"WWW-Authenticate": 'Bearer realm="pig-search"'},
            ) from None
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=str(error)) from None
