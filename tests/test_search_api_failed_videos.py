"""Media endpoints of videos that the real indexer could not index, and of broken indexed files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from shared.index_store import CATALOG_FILE, Catalog

from test_search_api_support import build_index, live_server, make_ffmpeg_clip, tiny_model
from videos import make_random_bytes, make_truncated, make_zero_bytes

# File name -> failure kind the indexer records for it.
BAD_FILES = {"empty.mp4": "empty_file", "random.mp4": "not_a_video", "truncated.mp4": "truncated"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("failed_videos")
    videos = root / "videos"
    good = videos / "bars.mp4"
    make_ffmpeg_clip(good, "smptebars=size=96x64:rate=10", 2)
    # A clip that the decode test damages after indexing.
    damaged = videos / "damaged.mp4"
    make_ffmpeg_clip(damaged, "testsrc=size=96x64:rate=10", 2)
    # The indexer takes files in path order, so "bars.mp4" is indexed and this is its duplicate.
    duplicate = videos / "copy of bars.mp4"
    shutil.copyfile(good, duplicate)
    bad = [make_zero_bytes(videos), make_random_bytes(videos), make_truncated(videos)]
    index_dir = root / "index"
    build_index(index_dir, tiny_model(), [good, damaged, duplicate, *bad])

    with Catalog(index_dir / CATALOG_FILE, read_only=True) as catalog:
        ids = {Path(video.path).name: video.id for video in catalog.list_videos()}
    return {"ids": ids, "damaged": damaged, "index_dir": index_dir}


@pytest.fixture(scope="module")
def client(corpus):
    with live_server(corpus["index_dir"]) as server, server.client() as http:
        yield http


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_failed_video_detail_has_no_links(client, corpus, name):
    response = client.get(f"/videos/{corpus['ids'][name]}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["status"] == "failed"
    assert detail["failure_kind"] == BAD_FILES[name]
    assert detail["failure_reason"]
    assert detail["thumbnail_url"] is None
    assert detail["file_url"] is None
    assert detail["segments"] == []


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("endpoint", ["thumbnail", "file"])
def test_failed_video_media_is_409(client, corpus, caplog, name, endpoint):
    video_id = corpus["ids"][name]
    with caplog.at_level(logging.WARNING, logger="search_api"):
        response = client.get(f"/videos/{video_id}/{endpoint}")
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert f"video {video_id}" in detail
    assert "failed to index" in detail
    assert f"{BAD_FILES[name]}: " in detail
    assert "indexer ingest" in detail
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_duplicate_video_serves_original_media(client, corpus):
    video_id = corpus["ids"]["copy of bars.mp4"]
    detail = client.get(f"/videos/{video_id}").json()
    assert detail["status"] == "duplicate"
    assert detail["duplicate_of"] == corpus["ids"]["bars.mp4"]
    assert detail["thumbnail_url"].endswith(f"/videos/{video_id}/thumbnail")

    thumbnail = client.get(f"/videos/{video_id}/thumbnail")
    assert thumbnail.status_code == 200, thumbnail.text
    assert thumbnail.headers["content-type"] == "image/jpeg"
    # The duplicate has no probe of its own, so the original's 2 s duration bounds t.
    outside = client.get(f"/videos/{video_id}/thumbnail", params={"t": 3.0})
    assert outside.status_code == 422
    assert client.get(f"/videos/{video_id}/file").status_code == 200


def test_openapi_marks_media_links_nullable(client):
    schema = client.get("/openapi.json").json()
    properties = schema["components"]["schemas"]["VideoDetail"]["properties"]
    for field in ("thumbnail_url", "file_url"):
        types = {option.get("type") for option in properties[field]["anyOf"]}
        assert types == {"string", "null"}, field
    responses = schema["paths"]["/videos/{video_id}/thumbnail"]["get"]["responses"]
    assert "409" in responses


def test_undecodable_indexed_video_is_500_logged_once(client, corpus, caplog):
    # Overwrite the indexed clip in place, as a disk fault would after indexing.
    damaged: Path = corpus["damaged"]
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    video_id = corpus["ids"]["damaged.mp4"]
    with caplog.at_level(logging.WARNING, logger="search_api"):
        response = client.get(f"/videos/{video_id}/thumbnail")
    assert response.status_code == 500, response.text
    assert f"video {video_id}" in response.json()["detail"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    message = errors[0].getMessage()
    assert f"video {video_id}" in message
    assert str(damaged.resolve()) in message
    assert "Traceback" not in caplog.text
