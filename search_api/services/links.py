"""Signed links to video files and thumbnails, for clients that cannot send a header.

Browsers load ``<video src>`` and ``<img src>`` without an Authorization header, so when an
API key is set, each media link in a response carries ``exp`` (Unix seconds) and ``sig``:
an HMAC-SHA256 of the link's path and expiry time under a key derived from the API key.
A signature covers the path only, so a signed thumbnail link works for any ``t``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

from pydantic import SecretStr

# Domain separation: the signing key differs from the API key, so a leaked signature
# reveals nothing that could be sent as a bearer token.
_KEY_CONTEXT = b"pig-search signed media links v1"


class LinkSignatureError(Exception):
    """Raised when a signed link is invalid (403) or expired (401)."""

    def __init__(self, message: str, expired: bool) -> None:
        super().__init__(message)
        self.expired = expired


class LinkSigner:
    """Build media links, signed when an API key is set, and verify their signatures."""

    def __init__(
        self,
        api_key: SecretStr | None,
        lifetime_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = (
            None
            if api_key is None
            else hmac.new(
                api_key.get_secret_value().encode("utf-8"), _KEY_CONTEXT, hashlib.sha256
            ).digest()
        )
        self.lifetime_s = lifetime_s
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def url(self, base_url: str, path: str, query: Mapping[str, str] | None = None) -> str:
        """Return ``base_url + path`` with the query, plus ``exp`` and ``sig`` when signing."""
        params = dict(query or {})
        if self._key is not None:
            # Rounded up to the next minute, so that repeated requests within a minute get
            # the same URL and browsers can cache thumbnails.
            expires = math.ceil((self._clock() + self.lifetime_s) / 60.0) * 60
            params["exp"] = str(expires)
            params["sig"] = self._signature(path, expires)
        return f"{base_url}{path}" + (f"?{urlencode(params)}" if params else "")

    def verify(self, path: str, expires: str, signature: str) -> None:
        """Check a link's signature and expiry, or raise LinkSignatureError."""
        if self._key is None:
            raise LinkSignatureError("signed links are disabled because no API key is set", False)
        try:
            expires_at = int(expires)
        except ValueError:
            raise LinkSignatureError(f"invalid link expiry {expires!r}", False) from None
        expected = self._signature(path, expires_at)
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8")):
            raise LinkSignatureError("invalid link signature", False)
        if expires_at < self._clock():
            raise LinkSignatureError(
                f"signed link expired at Unix time {expires_at}; get a fresh link from "
                f"POST /search or GET /videos/{{id}}",
                True,
            )

    def _signature(self, path: str, expires: int) -> str:
        assert self._key is not None
        message = f"{path}\n{expires}".encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
