"""API key, CORS and open health routes of the search service."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from search_api.services.links import LinkSigner
from search_api.settings import ApiSettings

from test_search_api_support import build_index, live_server, make_ffmpeg_clip, tiny_model

API_KEY = "test-key-7d1f"
ORIGIN = "https://search.example.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("search_api_security")
    clip = root / "videos" / "bars.mp4"
    make_ffmpeg_clip(clip, "smptebars=size=96x64:rate=10", 2)
    build_index(root / "index", tiny_model(), [clip])
    with live_server(root / "index", api_key=API_KEY, cors_origins=[ORIGIN]) as running:
        yield running


def test_missing_key_is_401(server):
    with server.client() as client:
        for method, path in (("POST", "/search"), ("GET", "/videos/1"),
                             ("GET", "/videos/1/file"), ("GET", "/videos/1/thumbnail"),
                             ("GET", "/metrics")):
            response = client.request(method, path, json={"query": "bars"})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "missing API key" in response.text


def test_wrong_key_is_401(server):
    with server.client(headers={"Authorization": "Bearer not-the-key"}) as client:
        response = client.post("/search", json={"query": "bars"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "invalid API key" in response.text
    assert API_KEY not in response.text


def test_right_key_is_accepted(server):
    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        response = client.post("/search", json={"query": "bars", "top_k": 1})
        assert response.status_code == 200
        video_id = response.json()["results"][0]["video_id"]
        assert client.get(f"/videos/{video_id}/file").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_health_routes_stay_open(server):
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_cors_allows_configured_origin(server):
    with server.client() as client:
        allowed = client.options(
            "/search",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )
        other = client.options(
            "/search",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in other.headers


def test_signed_links_work_without_header(server):
    with server.client(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        hit = client.post("/search", json={"query": "bars", "top_k": 1}).json()["results"][0]
    assert "sig=" in hit["file_url"]
    assert "exp=" in hit["file_url"]
    assert API_KEY not in hit["file_url"]
    with httpx.Client(timeout=60.0) as browser:
        assert browser.get(hit["file_url"]).status_code == 200
        thumbnail = browser.get(hit["thumbnail_url"])
        assert thumbnail.status_code == 200
        assert thumbnail.headers["content-type"] == "image/jpeg"

        tampered = hit["file_url"].replace(f"/videos/{hit['video_id']}/", "/videos/999/")
        assert browser.get(tampered).status_code == 403
        wrong_signature = httpx.URL(hit["file_url"]).copy_set_param("sig", "x" * 43)
        assert browser.get(wrong_signature).status_code == 403


def test_expired_link_is_401(server):
    # A link signed with the right key an hour and a bit ago.
    signer = LinkSigner(SecretStr(API_KEY), lifetime_s=60, clock=lambda: time.time() - 4000)
    expired = signer.url(server.base_url, "/videos/1/file")
    with httpx.Client(timeout=60.0) as browser:
        response = browser.get(expired)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_api_key_rejected(tmp_path, value):
    with pytest.raises(ValidationError) as error:
        ApiSettings(index_dir=tmp_path, api_key=value)
    assert "unset PIG_API_KEY to disable authentication" in str(error.value)
