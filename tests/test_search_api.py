"""Search service against a real uvicorn server over an index of real video files."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image

from test_search_api_support import build_index, live_server, make_video_folder, tiny_model

QUERY = "a man riding a bike down a street"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("search_api")
    paths = make_video_folder(root / "videos")
    # A byte-identical copy, which the indexer records as a duplicate of clips/bikes.mp4.
    copy = root / "videos" / "copies" / "bikes copy.mp4"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(paths[0], copy)
    index_dir = root / "index"
    build_index(index_dir, tiny_model(), [*paths, copy])
    return {"root": root, "paths": paths, "copy": copy, "index_dir": index_dir}


@pytest.fixture(scope="module")
def server(corpus):
    with live_server(
        corpus["index_dir"], max_top_k=100, max_query_chars=3000, max_body_bytes=16384
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with server.client() as http:
        yield http


def search(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/search", json={"query": QUERY, **body})


def test_search_returns_ranked_fields(client, corpus):
    response = search(client, top_k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert len(results) == 5
    assert [hit["rank"] for hit in results] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)
    catalogued = {str(path.resolve()) for path in corpus["paths"]}
    for hit in results:
        assert hit["path"] in catalogued
        assert 0.0 <= hit["start_s"] < hit["end_s"] <= hit["duration_s"] + 1e-6
        assert hit["file_url"].endswith(f"/videos/{hit['video_id']}/file")
        assert f"/videos/{hit['video_id']}/thumbnail?t=" in hit["thumbnail_url"]
    assert body["total_videos"] == len(corpus["paths"])
    assert body["index"]["snapshot_id"]
    assert body["index"]["model_fingerprint"]
    assert body["query_truncated"] is False
    assert body["took_ms"] > 0


def test_search_groups_segments_per_video(client, corpus):
    # bikes.mp4 (10 s) has three 4-second segments; each video must appear once.
    results = search(client, top_k=100).json()["results"]
    video_ids = [hit["video_id"] for hit in results]
    assert len(video_ids) == len(set(video_ids))
    assert len(results) == len(corpus["paths"])


def test_paging_offset_no_repeats(client):
    everything = search(client, top_k=8).json()["results"]
    first = search(client, top_k=3, offset=0).json()["results"]
    second = search(client, top_k=3, offset=3).json()["results"]
    assert [hit["video_id"] for hit in first + second] == [
        hit["video_id"] for hit in everything[:6]
    ]
    assert [hit["rank"] for hit in second] == [4, 5, 6]
    assert not {hit["video_id"] for hit in first} & {hit["video_id"] for hit in second}


def test_min_score_filter(client):
    everything = search(client, top_k=100).json()["results"]
    threshold = everything[2]["score"]
    filtered = search(client, top_k=100, min_score=threshold).json()["results"]
    assert all(hit["score"] >= threshold for hit in filtered)
    expected = [hit["video_id"] for hit in everything if hit["score"] >= threshold]
    assert [hit["video_id"] for hit in filtered] == expected


def test_path_prefix_filter(client, corpus):
    prefix = str((corpus["root"] / "videos" / "generated").resolve()) + "/"
    results = search(client, top_k=100, path_prefix=prefix).json()["results"]
    assert len(results) == 5
    assert all(hit["path"].startswith(prefix) for hit in results)
    assert [hit["rank"] for hit in results] == [1, 2, 3, 4, 5]


def test_path_prefix_paging_after_filter(client, corpus):
    prefix = str((corpus["root"] / "videos" / "clips").resolve()) + "/"
    page = search(client, top_k=2, offset=1, path_prefix=prefix).json()["results"]
    assert len(page) == 2
    assert [hit["rank"] for hit in page] == [2, 3]
    assert all(hit["path"].startswith(prefix) for hit in page)


@pytest.mark.parametrize("query", ["", "   ", "\n\t "])
def test_blank_query_rejected(client, query):
    response = client.post("/search", json={"query": query})
    assert response.status_code == 422
    assert "query must not be empty" in response.text


@pytest.mark.parametrize("top_k", [0, -1, 101])
def test_top_k_out_of_range(client, top_k):
    response = search(client, top_k=top_k)
    assert response.status_code == 422
    assert f"top_k must be between 1 and 100, got {top_k}" in response.text


def test_offset_out_of_range(client):
    response = search(client, offset=-1)
    assert response.status_code == 422
    assert "offset must be between 0 and" in response.text


def test_query_too_long_names_limit(client):
    response = client.post("/search", json={"query": "x" * 5000})
    assert response.status_code == 422
    assert "at most 3000 characters, got 5000" in response.text


def test_malformed_json_rejected(client):
    response = client.post(
        "/search", content=b'{"query": "dog", ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_missing_query_field_rejected(client):
    response = client.post("/search", json={"top_k": 3})
    assert response.status_code == 422
    assert "query" in response.text


def test_long_query_truncated_and_flagged(client):
    words = " ".join(["cat", "dog", "bike", "street", "red"] * 100)  # 500 words
    response = client.post("/search", json={"query": words, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_truncated"] is True
    assert len(body["results"]) == 3


@pytest.mark.parametrize("query", ["自転車に乗る男性", "一只猫在睡觉", "🚲🐶🔥", "café crème brûlée"])
def test_non_ascii_queries(client, query):
    response = client.post("/search", json={"query": query, "top_k": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3


def test_top_k_above_video_count(client, corpus):
    response = search(client, top_k=100)
    results = response.json()["results"]
    assert len(results) == len(corpus["paths"])
    assert all(hit["video_id"] >= 0 for hit in results)
    assert sorted({hit["path"] for hit in results}) == sorted(
        str(path.resolve()) for path in corpus["paths"]
    )


def test_offset_past_end_is_empty(client, corpus):
    response = search(client, top_k=5, offset=len(corpus["paths"]))
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_video_detail_with_segments(client, corpus):
    hit = search(client, top_k=100).json()["results"]
    bikes = next(h for h in hit if h["path"].endswith("bikes.mp4"))
    response = client.get(f"/videos/{bikes['video_id']}")
    assert response.status_code == 200
    detail = response.json()
    assert detail["path"] == bikes["path"]
    assert detail["status"] == "indexed"
    assert detail["width"] == 640
    assert len(detail["segments"]) == 3
    starts = [segment["start_s"] for segment in detail["segments"]]
    assert starts == sorted(starts)
    assert detail["segments"][-1]["end_s"] == pytest.approx(detail["duration_s"])


def test_unknown_video_is_404(client):
    for path in ("/videos/999999", "/videos/999999/file", "/videos/999999/thumbnail"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "not in the catalog" in response.text


def test_non_integer_video_id_rejected(client):
    for path in ("/videos/abc", "/videos/1.5/file", "/videos/-/thumbnail"):
        response = client.get(path)
        assert response.status_code == 422, path


@pytest.mark.parametrize(
    "path",
    [
        "/videos/..%2f..%2f..%2fetc%2fpasswd/file",
        "/videos/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
        "/videos/1/..%2f..%2f..%2fetc%2fpasswd",
        "/videos/%2fetc%2fpasswd/file",
        "/videos/1%2f..%2f..%2fetc%2fpasswd/file",
    ],
)
def test_path_traversal_cannot_escape_catalog(server, path):
    # Send the raw path, so that the client does not normalise it first.
    with httpx.Client(timeout=30.0) as raw:
        request = raw.build_request("GET", server.base_url)
        request.url = request.url.copy_with(raw_path=path.encode("ascii"))
        response = raw.send(request)
    assert response.status_code in (404, 422)
    assert b"root:" not in response.content


def test_thumbnail_is_jpeg(client):
    hit = search(client, top_k=1).json()["results"][0]
    response = client.get(f"/videos/{hit['video_id']}/thumbnail")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    assert image.size == (256, 256)


def test_thumbnail_at_given_second(client):
    results = search(client, top_k=100).json()["results"]
    red = next(h for h in results if h["path"].endswith("red.mp4"))
    response = client.get(f"/videos/{red['video_id']}/thumbnail", params={"t": 0.5})
    assert response.status_code == 200
    pixels = Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((128, 128))
    assert pixels[0] > 200
    assert pixels[1] < 60
    assert pixels[2] < 60


def test_thumbnail_time_outside_video(client):
    hit = search(client, top_k=1).json()["results"][0]
    response = client.get(f"/videos/{hit['video_id']}/thumbnail", params={"t": 10_000})
    assert response.status_code == 422
    assert "t must be between 0 and" in response.text


def test_file_download_matches_disk(client):
    hit = search(client, top_k=1).json()["results"][0]
    response = client.get(f"/videos/{hit['video_id']}/file")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == Path(hit["path"]).read_bytes()


def test_file_range_request(client):
    hit = search(client, top_k=1).json()["results"][0]
    data = Path(hit["path"]).read_bytes()
    response = client.get(f"/videos/{hit['video_id']}/file", headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == data[100:200]
    assert response.headers["content-range"] == f"bytes 100-199/{len(data)}"

    tail = client.get(f"/videos/{hit['video_id']}/file", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206
    assert tail.content == data[-50:]

    beyond = client.get(
        f"/videos/{hit['video_id']}/file", headers={"Range": f"bytes={len(data) + 10}-"}
    )
    assert beyond.status_code == 416


def test_healthz_and_readyz(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["vector_count"] > 0
    assert body["snapshot_id"]


def test_metrics_exposes_counts_and_stages(client):
    search(client, top_k=2)
    text = client.get("/metrics").text
    assert 'pig_search_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'pig_search_http_requests_total{method="POST",route="/search",status="422"}' in text
    for stage in ("encode", "search", "metadata"):
        assert f'pig_search_stage_duration_seconds_count{{stage="{stage}"}}' in text
    assert "pig_search_index_vectors " in text
    assert "pig_search_encode_batch_size_count" in text


def test_openapi_docs_served(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/search" in schema["paths"]
    assert "/videos/{video_id}/file" in schema["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_no_external_scripts(client, page):
    html = client.get(page).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: *'([^']+)'", html)
    scripts = [source for source in sources if source.endswith((".js", ".css"))]
    assert scripts, f"{page} references no script or style sheet"
    for source in sources:
        assert source.startswith("/"), f"{page} loads {source} from outside the service"
    for script in scripts:
        response = client.get(script)
        assert response.status_code == 200, script
        assert len(response.content) > 1000, script


def test_body_too_large_is_413(client):
    response = client.post("/search", json={"query": "dog " * 5000})
    assert response.status_code == 413
    assert "16384 bytes" in response.text


def test_chunked_body_too_large_is_413(client):
    def chunks():
        yield b'{"query": "'
        for _ in range(300):
            yield b"dog " * 20
        yield b'"}'

    response = client.post(
        "/search", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_request_id_echoed(client):
    response = search(client, top_k=1)
    assert len(response.headers["x-request-id"]) == 32
    own = client.post("/search", json={"query": "dog"}, headers={"X-Request-ID": "trace-42"})
    assert own.headers["x-request-id"] == "trace-42"


def test_repeated_query_served_from_cache(client):
    first = search(client, top_k=3).json()
    metrics_before = client.get("/metrics").text
    second = search(client, top_k=3).json()
    metrics_after = client.get("/metrics").text
    assert [h["video_id"] for h in first["results"]] == [h["video_id"] for h in second["results"]]

    def hits(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('pig_search_query_cache_total{result="hit"}'):
                return float(line.split()[-1])
        return 0.0

    assert hits(metrics_after) == hits(metrics_before) + 1


def test_path_prefix_selects_duplicate(client, corpus):
    original = str(corpus["paths"][0].resolve())
    copy = str(corpus["copy"].resolve())
    results = search(client, top_k=10, path_prefix=str(corpus["copy"].parent.resolve()) + "/")
    assert len(results.json()["results"]) == 1
    hit = results.json()["results"][0]
    assert hit["path"] == copy
    assert hit["duplicate_paths"] == [original]

    unfiltered = search(client, top_k=100).json()["results"]
    bikes = next(h for h in unfiltered if h["video_id"] == hit["video_id"])
    assert bikes["path"] == original
    assert bikes["duplicate_paths"] == [copy]
    detail = client.get(f"/videos/{hit['video_id']}").json()
    assert detail["path"] == original
    assert detail["duplicate_paths"] == [copy]


def test_out_of_range_video_id_is_422(client):
    for path in ("/videos/99999999999999999999999", "/videos/99999999999999999999999/file",
                 "/videos/9223372036854775808/thumbnail"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert "9223372036854775807" in response.text, path


def test_thumbnail_nan_time_is_422(client):
    hit = search(client, top_k=1).json()["results"][0]
    for value in ("nan", "inf", "-5"):
        response = client.get(f"/videos/{hit['video_id']}/thumbnail", params={"t": value})
        assert response.status_code == 422, value
        assert response.json()["detail"][0]["loc"] == ["query", "t"], value


def test_file_head_request(client):
    hit = search(client, top_k=1).json()["results"][0]
    size = Path(hit["path"]).stat().st_size
    response = client.head(f"/videos/{hit['video_id']}/file")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == b""


def test_range_errors_are_json(client):
    hit = search(client, top_k=1).json()["results"][0]
    size = Path(hit["path"]).stat().st_size
    url = f"/videos/{hit['video_id']}/file"
    beyond = client.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-type"] == "application/json"
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert f"{size} bytes" in beyond.json()["detail"]

    malformed = client.get(url, headers={"Range": "bytes=20-10"})
    assert malformed.status_code == 400
    assert malformed.headers["content-type"] == "application/json"
    assert "Range" in malformed.json()["detail"]


@pytest.mark.parametrize("field,value", [("top_k", True), ("offset", False), ("top_k", 2.0),
                                         ("top_k", "3"), ("min_score", True)])
def test_non_strict_numbers_rejected(client, field, value):
    response = search(client, **{field: value})
    assert response.status_code == 422, response.text


def test_metrics_label_docs_routes(client):
    client.get("/docs")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    assert 'route="/docs"' in text
    assert 'route="/openapi.json"' in text


def test_metrics_label_docs_files_by_mount(client):
    html = client.get("/docs").text
    script = re.search(r'src="(/[^"]+\.js)"', html).group(1)
    assert client.get(script).status_code == 200
    text = client.get("/metrics").text
    mount = script.rsplit("/", 1)[0]
    assert f'route="{mount}/{{path}}"' in text
    assert script not in text, "a file name must not become a metric label"


def test_healthz_has_only_liveness_fields(client):
    assert client.get("/healthz").json() == {"status": "ok"}
