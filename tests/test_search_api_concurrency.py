"""Search service under 200 concurrent requests: same results, bounded threads."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from test_search_api_support import (
    build_index,
    live_server,
    make_video_folder,
    server_threads,
    tiny_model,
)

QUERIES = [f"{subject} {action}" for subject in ("a dog", "a car", "two people", "a red ball")
           for action in ("running", "at night", "in the rain", "on a street", "jumping")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("search_api_concurrency")
    paths = make_video_folder(root / "videos")
    build_index(root / "index", tiny_model(), paths)
    # No cache, so that concurrent requests really go through batched encoding.
    with live_server(root / "index", cache_size=0, max_batch_size=16, batch_wait_ms=5) as running:
        yield running


def ranked(body: dict) -> list[tuple[int, float, float, float]]:
    return [(h["video_id"], h["score"], h["start_s"], h["end_s"]) for h in body["results"]]


async def burst(base_url: str, queries: list[str]) -> tuple[list[httpx.Response], int]:
    peak = server_threads()
    done = asyncio.Event()

    async def watch_threads() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server_threads())
            await asyncio.sleep(0.005)

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits) as client:
        watcher = asyncio.create_task(watch_threads())
        responses = await asyncio.gather(
            *(client.post("/search", json={"query": q, "top_k": 5}) for q in queries)
        )
        done.set()
        await watcher
    return responses, peak


def batch_histogram(metrics: str) -> tuple[float, float]:
    """Return (batches of size 1, all batches) of the encode batch size histogram."""
    single = float(re.search(r'pig_search_encode_batch_size_bucket\{le="1.0"\} (\S+)', metrics)[1])
    total = float(re.search(r"pig_search_encode_batch_size_count (\S+)", metrics)[1])
    return single, total


@pytest.mark.slow
def test_concurrent_requests_match_sequential(server):
    with server.client() as client:
        expected = {}
        for query in QUERIES:
            response = client.post("/search", json={"query": query, "top_k": 5})
            assert response.status_code == 200, response.text
            expected[query] = ranked(response.json())
        single_before, total_before = batch_histogram(client.get("/metrics").text)

    threads_before = server_threads()
    queries = [QUERIES[i % len(QUERIES)] for i in range(200)]
    responses, peak = asyncio.run(burst(server.base_url, queries))
    threads_after = server_threads()

    assert [r.status_code for r in responses] == [200] * 200
    for query, response in zip(queries, responses):
        got = ranked(response.json())
        assert [hit[0] for hit in got] == [hit[0] for hit in expected[query]], query
        for (_, score, start, end), (_, want_score, want_start, want_end) in zip(
            got, expected[query]
        ):
            assert score == pytest.approx(want_score, abs=1e-5)
            assert (start, end) == (want_start, want_end)

    # A thread per request would add about 200 threads; the service's pools are fixed.
    assert threads_after <= threads_before + 2
    assert peak <= threads_before + 40

    with server.client() as client:
        single_after, total_after = batch_histogram(client.get("/metrics").text)
    batches = total_after - total_before
    assert batches < 200, "every request was encoded in its own forward pass"
    assert single_after - single_before < batches
