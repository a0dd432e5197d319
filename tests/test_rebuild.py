"""In-place ``indexer ingest --rebuild`` with another model, with a live search service attached.

The rebuild writes the new model's rows next to the old ones and publishes one snapshot at the
end. These tests check that the old snapshot keeps serving every video until then, that a
rebuild killed with SIGKILL resumes without encoding finished videos again, and that plain
ingests refuse to mix models meanwhile. The clips are real ffmpeg files and the models are two
pig-tiny checkpoints with different random weights.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.cli import plural
from shared.index_store import (
    CATALOG_FILE,
    CURRENT_FILE,
    MODEL_DIR,
    REBUILD_MODEL_DIR,
    Catalog,
    ProbeFields,
    SegmentToWrite,
    load_snapshot,
    read_current_snapshot_id,
)
from shared.model import load_checkpoint, model_fingerprint
from shared.model.checkpoint import read_checkpoint_config
from test_search_api_support import environment_without_pig, live_server
from videos import make_h264

REPO = Path(__file__).resolve().parent.parent
CLIP_COUNT = 8
KILL_AFTER_VIDEOS = 2


@pytest.fixture(scope="module")
def fingerprints(checkpoints: tuple[Path, Path]) -> tuple[str, str]:
    return tuple(model_fingerprint(load_checkpoint(c, device="cpu")) for c in checkpoints)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Clips of different lengths, so no two have the same content."""
    folder = tmp_path_factory.mktemp("rebuild_videos")
    return [make_h264(folder, f"clip{i}.mp4", seconds=1.0 + 0.2 * i) for i in range(CLIP_COUNT)]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory, clips: list[Path], checkpoints: tuple[Path, Path]) -> Path:
    """An index of every clip, built with the old model."""
    index_dir = tmp_path_factory.mktemp("rebuild_built") / "index"
    result = ingest(index_dir, checkpoints[0], clips[0].parent)
    assert result.returncode == 0, result.stderr
    return index_dir


@pytest.fixture(scope="module")
def half_rebuilt(
    tmp_path_factory: pytest.TempPathFactory, built_index: Path, clips: list[Path], checkpoints: tuple[Path, Path]
) -> tuple[Path, int]:
    """A copy of ``built_index`` whose rebuild with the new model was killed part way."""
    index_dir = tmp_path_factory.mktemp("rebuild_half") / "index"
    shutil.copytree(built_index, index_dir)
    process = start_rebuild(index_dir, checkpoints[1], clips[0].parent)
    killed_at = kill_after(process, index_dir / CATALOG_FILE, KILL_AFTER_VIDEOS)
    return index_dir, killed_at


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "indexer.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=environment_without_pig(), cwd=REPO)


def ingest_arguments(index_dir: Path, checkpoint: Path, folder: Path) -> list[str]:
    return [
        "ingest", str(folder), "--index-dir", str(index_dir), "--checkpoint", str(checkpoint),
        "--workers", "1", "--batch-size", "1", "--snapshot-every", "1", "--segment-seconds", "10",
        "--device", "cpu", "--no-progress",
    ]


def ingest(index_dir: Path, checkpoint: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*ingest_arguments(index_dir, checkpoint, folder), *extra)


def start_rebuild(index_dir: Path, checkpoint: Path, folder: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "indexer.cli", *ingest_arguments(index_dir, checkpoint, folder), "--rebuild"]
    return subprocess.Popen(command, cwd=REPO, env=environment_without_pig(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def max_segment_id(catalog_path: Path) -> int:
    connection = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=1)
    try:
        return int(connection.execute("SELECT MAX(id) FROM segments").fetchone()[0])
    finally:
        connection.close()


def rebuilt_videos(catalog_path: Path, old_max_id: int) -> int:
    """Return the videos a rebuild has committed: every clip has one segment, and segment ids
    are never reused, so each segment above ``old_max_id`` is one re-encoded video."""
    try:
        connection = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=1)
    except sqlite3.OperationalError:
        return 0
    try:
        return int(connection.execute("SELECT COUNT(*) FROM segments WHERE id > ?", (old_max_id,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def kill_after(
    process: subprocess.Popen[bytes], catalog_path: Path, videos: int, on_poll: Callable[[], None] | None = None
) -> int:
    """SIGKILL ``process`` once the rebuild has committed ``videos`` videos; return the count then.

    Call it right after starting the rebuild, before the rebuild can commit a segment.
    """
    old_max_id = max_segment_id(catalog_path)
    try:
        deadline = time.monotonic() + 120
        while rebuilt_videos(catalog_path, old_max_id) < videos:
            assert process.poll() is None, "the rebuild ended before it could be killed"
            assert time.monotonic() < deadline, "the rebuild made no progress within 120 s"
            if on_poll is not None:
                on_poll()
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    killed_at = rebuilt_videos(catalog_path, old_max_id)
    assert videos <= killed_at < CLIP_COUNT
    return killed_at


def copy_fingerprint(index_dir: Path) -> str:
    return str(read_checkpoint_config(index_dir / MODEL_DIR)["fingerprint"])


def all_rows(index_dir: Path) -> tuple[int, int, list[tuple]]:
    """Return (video rows, segment rows, meta rows) of every generation."""
    connection = sqlite3.connect(f"file:{index_dir / CATALOG_FILE}?mode=ro", uri=True)
    try:
        videos = connection.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        segments = connection.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
        meta = connection.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    finally:
        connection.close()
    return videos, segments, meta


def search_everything(client) -> dict:
    response = client.post("/search", json={"query": "a test pattern", "top_k": 100})
    assert response.status_code == 200, response.text
    return response.json()


def result_paths(body: dict) -> set[str]:
    return {hit["path"] for hit in body["results"]}


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.05)


@pytest.mark.slow
def test_rebuild_serves_old_snapshot_until_done(
    tmp_path: Path, built_index: Path, clips: list[Path], checkpoints: tuple[Path, Path],
    fingerprints: tuple[str, str],
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(built_index, index_dir)
    expected = {str(clip.resolve()) for clip in clips}
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        old_ids = set(catalog.segment_ids().tolist())

    with live_server(index_dir, reload_interval_s=0.1) as server, server.client() as client:
        old_snapshot = client.get("/readyz").json()["snapshot_id"]
        answers = []

        def query() -> None:
            answers.append((search_everything(client), client.get("/readyz").status_code))

        process = start_rebuild(index_dir, checkpoints[1], clips[0].parent)
        killed_at = kill_after(process, index_dir / CATALOG_FILE, KILL_AFTER_VIDEOS, on_poll=query)
        time.sleep(0.3)  # several reload polls after the kill
        query()

        # While the rebuild was running and after it was killed: the old snapshot, complete.
        assert len(answers) >= 2
        for body, ready_status in answers:
            assert ready_status == 200
            assert body["index"]["snapshot_id"] == old_snapshot
            assert body["index"]["model_fingerprint"] == fingerprints[0]
            assert result_paths(body) == expected
            assert body["total_videos"] == CLIP_COUNT
        assert read_current_snapshot_id(index_dir) == old_snapshot
        assert copy_fingerprint(index_dir) == fingerprints[0]

        # The same command again encodes only the videos the killed run did not commit. A
        # second client searches from before the rebuild until the service has reloaded.
        swap_answers: list[dict] = []
        swap_done = threading.Event()

        def query_through_swap() -> None:
            with server.client() as swap_client:
                while not swap_done.is_set():
                    swap_answers.append(search_everything(swap_client))

        searcher = threading.Thread(target=query_through_swap)
        searcher.start()
        try:
            resumed = ingest(index_dir, checkpoints[1], clips[0].parent, "--rebuild")
            assert resumed.returncode == 0, resumed.stderr
            assert f"indexed {plural(CLIP_COUNT - killed_at, 'video')} (" in resumed.stdout
            wait_for(lambda: client.get("/readyz").json()["model_fingerprint"] == fingerprints[1])
        finally:
            swap_done.set()
            searcher.join(timeout=60)
        ready = client.get("/readyz")
        body = search_everything(client)

    # Through the final commit and the reload: the old videos, then the new ones, never none.
    served_models = [answer["index"]["model_fingerprint"] for answer in swap_answers]
    assert served_models[0] == fingerprints[0]
    assert served_models == sorted(served_models, key=lambda f: f == fingerprints[1])
    for answer in swap_answers:
        assert result_paths(answer) == expected, f"a search of {answer['index']} returned other videos"
    assert ready.status_code == 200
    assert body["index"]["model_fingerprint"] == fingerprints[1]
    assert body["index"]["snapshot_id"] == read_current_snapshot_id(index_dir)
    assert result_paths(body) == expected
    assert body["total_videos"] == CLIP_COUNT

    # Every video is indexed exactly once, by the new model. The old rows stay retired, out of
    # every count, until the next writer run deletes them.
    snapshot = load_snapshot(index_dir)
    snapshot_ids = set(faiss.vector_to_array(snapshot.index.id_map).tolist())
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert catalog.rebuild_state() is None
        assert catalog.model_fingerprint() == fingerprints[1]
        for clip in clips:
            segments = catalog.list_segments(catalog.get_video_by_path(str(clip.resolve())).id)
            assert [s.segment_index for s in segments] == [0], f"{clip.name} indexed more than once"
        assert snapshot.vector_count == catalog.count_segments() == CLIP_COUNT
        assert snapshot_ids == set(catalog.segment_ids().tolist())
    assert snapshot_ids.isdisjoint(old_ids)
    assert all_rows(index_dir)[:2] == (CLIP_COUNT, 2 * CLIP_COUNT)
    assert snapshot.model_fingerprint == fingerprints[1]
    assert copy_fingerprint(index_dir) == fingerprints[1]
    verify = run_cli("verify", "--index-dir", index_dir)
    assert verify.returncode == 0, verify.stdout

    # A rebuild killed after its final commit, before the model swap and the move of CURRENT:
    # running the same command again publishes without encoding anything.
    new_snapshot = read_current_snapshot_id(index_dir)
    (index_dir / MODEL_DIR).rename(index_dir / REBUILD_MODEL_DIR)
    shutil.copytree(checkpoints[0], index_dir / MODEL_DIR)
    (index_dir / CURRENT_FILE).write_text(old_snapshot + "\n")
    completed = ingest(index_dir, checkpoints[1], clips[0].parent, "--rebuild")
    assert completed.returncode == 0, completed.stderr
    assert "indexed 0 videos" in completed.stdout
    assert read_current_snapshot_id(index_dir) not in (old_snapshot, new_snapshot)
    assert load_snapshot(index_dir).model_fingerprint == fingerprints[1]
    assert copy_fingerprint(index_dir) == fingerprints[1]
    assert not (index_dir / REBUILD_MODEL_DIR).exists()
    assert all_rows(index_dir)[:2] == (CLIP_COUNT, CLIP_COUNT)
    assert run_cli("verify", "--index-dir", index_dir).returncode == 0


@pytest.mark.slow
def test_plain_ingest_during_rebuild_fails(
    tmp_path: Path, half_rebuilt: tuple[Path, int], clips: list[Path], checkpoints: tuple[Path, Path],
    fingerprints: tuple[str, str],
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(half_rebuilt[0], index_dir)
    rows_before = all_rows(index_dir)
    current_before = read_current_snapshot_id(index_dir)

    with_new_model = ingest(index_dir, checkpoints[1], clips[0].parent)
    with_old_model = ingest(index_dir, checkpoints[0], clips[0].parent)

    for result in (with_new_model, with_old_model):
        assert result.returncode == 1
        assert "rebuild unfinished" in result.stderr
        assert fingerprints[0] in result.stderr
        assert fingerprints[1] in result.stderr
        assert f"`--rebuild --checkpoint {index_dir / REBUILD_MODEL_DIR}`" in result.stderr
    assert "resume" in with_new_model.stderr
    assert f"to model {fingerprints[1]} is unfinished" in with_old_model.stderr
    assert "new random weights" in with_old_model.stderr
    assert all_rows(index_dir) == rows_before
    assert read_current_snapshot_id(index_dir) == current_before
    assert copy_fingerprint(index_dir) == fingerprints[0]


@pytest.mark.slow
def test_service_starts_during_rebuild(
    tmp_path: Path, half_rebuilt: tuple[Path, int], clips: list[Path], fingerprints: tuple[str, str]
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(half_rebuilt[0], index_dir)
    current = read_current_snapshot_id(index_dir)
    snapshot_ids = set(faiss.vector_to_array(load_snapshot(index_dir).index.id_map).tolist())

    verify = run_cli("verify", "--index-dir", index_dir)
    assert verify.returncode == 0, verify.stdout
    assert f"rebuild unfinished, to model {fingerprints[1]}" in verify.stdout
    status = run_cli("status", "--index-dir", index_dir)
    assert f"{plural(half_rebuilt[1], 'video')} written" in status.stdout

    with live_server(index_dir, reload_interval_s=0.1) as server, server.client() as client:
        ready = client.get("/readyz")
        body = search_everything(client)
        detail = client.get(f"/videos/{body['results'][0]['video_id']}")
    assert ready.status_code == 200
    assert ready.json()["snapshot_id"] == current
    assert ready.json()["model_fingerprint"] == fingerprints[0]
    assert body["index"]["model_fingerprint"] == fingerprints[0]
    assert result_paths(body) == {str(clip.resolve()) for clip in clips}
    assert detail.status_code == 200
    assert {s["vector_id"] for s in detail.json()["segments"]} <= snapshot_ids


def unit_vectors(count: int, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return list(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def write_video(catalog: Catalog, path: str, content_hash: str, vectors: list[np.ndarray]) -> int:
    segments = [SegmentToWrite(i, float(i), float(i + 1), v) for i, v in enumerate(vectors)]
    with catalog.transaction():
        return catalog.write_indexed(path, 100, 1, content_hash, ProbeFields(duration=2.0), segments)


def test_catalog_rebuild_keeps_live_rows(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / CATALOG_FILE, read_only=False)
    catalog.set_model("old-model", {}, 8)
    kept = write_video(catalog, "/videos/kept.mp4", "hash-kept", unit_vectors(2, 8, 0))
    dropped = write_video(catalog, "/videos/dropped.mp4", "hash-dropped", unit_vectors(1, 8, 1))
    old_ids = set(catalog.segment_ids().tolist())

    generation = catalog.start_rebuild("new-model", {"embed_dim": 4}, 4)
    assert catalog.find_indexed_by_hash("hash-kept") is None
    assert write_video(catalog, "/videos/kept.mp4", "hash-kept", unit_vectors(2, 4, 2)) == kept

    # Readers still see the old generation only, and every old vector id still resolves.
    assert set(catalog.segment_ids().tolist()) == old_ids
    assert catalog.count_segments() == 3
    assert catalog.count_indexed_videos() == 2
    assert {s.vector_id for s in catalog.list_segments(kept)} < old_ids
    assert set(catalog.segments_for_vector_ids(old_ids)) == old_ids
    assert catalog.model_fingerprint() == "old-model"
    state = catalog.rebuild_state()
    assert (state.generation, state.fingerprint, state.embed_dim, state.videos_done) == (generation, "new-model", 4, 1)
    assert catalog.find_indexed_by_hash("hash-kept").id == kept
    new_ids, new_vectors = next(catalog.iter_vectors(rebuild=True))
    assert new_vectors.shape == (2, 4)
    assert set(new_ids.tolist()).isdisjoint(old_ids)

    assert catalog.finish_rebuild("snapshot-1", 2, "flat") == 1
    assert catalog.rebuild_state() is None
    assert catalog.model_fingerprint() == "new-model"
    assert catalog.embed_dim() == 4
    assert set(catalog.segment_ids().tolist()) == set(new_ids.tolist())
    assert catalog.snapshot_vector_count("snapshot-1") == 2
    assert catalog.indexed_videos_without_segments() == []

    # The old rows are retired: the old snapshot's ids still resolve, and every other read skips them.
    assert set(catalog.segments_for_vector_ids(old_ids)) == old_ids
    assert catalog.get_video(dropped).path == "/videos/dropped.mp4"
    assert catalog.get_video_by_path("/videos/dropped.mp4") is None
    assert [video.id for video in catalog.list_videos()] == [kept]
    assert catalog.count_by_status() == {"indexed": 1}
    assert catalog.count_indexed_videos() == 1
    assert catalog.count_segments() == 2
    assert catalog.find_indexed_by_hash("hash-dropped") is None
    catalog.close()

    # The next writer deletes them.
    with Catalog(tmp_path / CATALOG_FILE, read_only=False) as writer:
        assert writer.segments_for_vector_ids(old_ids) == {}
        assert writer.get_video(dropped) is None
        assert writer.get_video(kept) is not None
        assert writer.count_segments() == 2


def test_catalog_rebuild_restarts_for_other_model(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / CATALOG_FILE, read_only=False)
    catalog.set_model("old-model", {}, 8)
    write_video(catalog, "/videos/a.mp4", "hash-a", unit_vectors(1, 8, 0))
    first = catalog.start_rebuild("model-b", {}, 4)
    write_video(catalog, "/videos/a.mp4", "hash-a", unit_vectors(1, 4, 1))

    second = catalog.start_rebuild("model-c", {}, 6)
    assert second > first
    assert catalog.rebuild_state().videos_done == 0
    assert list(catalog.iter_vectors(rebuild=True)) == []
    assert catalog.count_segments() == 1
    catalog.close()


def test_catalog_discarded_rebuild_consistent(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / CATALOG_FILE, read_only=False)
    catalog.set_model("old-model", {}, 8)
    kept = write_video(catalog, "/videos/kept.mp4", "hash-kept", unit_vectors(1, 8, 0))
    live_ids = set(catalog.segment_ids().tolist())
    catalog.start_rebuild("model-a", {}, 4)
    write_video(catalog, "/videos/kept.mp4", "hash-kept", unit_vectors(1, 4, 1))
    new = write_video(catalog, "/videos/new.mp4", "hash-new", unit_vectors(1, 4, 2))
    with catalog.transaction():
        catalog.write_duplicate("/videos/copy.mp4", 100, 1, "hash-new", new)

    # Model B discards A's rebuild: A's rows go back to the live state, so B encodes them again.
    second = catalog.start_rebuild("model-b", {}, 6)
    assert catalog.indexed_videos_without_segments() == []
    video = catalog.get_video(kept)
    assert (video.generation, video.status) == (catalog.live_generation(), "indexed")
    assert video.generation != second
    assert catalog.get_video(new) is None
    assert catalog.get_video_by_path("/videos/copy.mp4") is None
    assert catalog.rebuild_state().videos_done == 0
    assert set(catalog.segment_ids().tolist()) == live_ids
    assert catalog.count_indexed_videos() == 1
    assert catalog.count_by_status() == {"indexed": 1}
    catalog.close()


def test_catalog_rebuild_count_skips_removed(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / CATALOG_FILE, read_only=False)
    catalog.set_model("old-model", {}, 8)
    write_video(catalog, "/videos/a.mp4", "hash-a", unit_vectors(1, 8, 0))
    write_video(catalog, "/videos/b.mp4", "hash-b", unit_vectors(1, 8, 1))
    catalog.start_rebuild("model-b", {}, 4)
    write_video(catalog, "/videos/a.mp4", "hash-a", unit_vectors(1, 4, 2))
    write_video(catalog, "/videos/b.mp4", "hash-b", unit_vectors(1, 4, 3))

    with catalog.transaction():
        assert catalog.mark_removed("/videos/a.mp4")
    assert catalog.rebuild_state().videos_done == 1
    catalog.close()


def test_catalog_schema_1_upgraded(tmp_path: Path) -> None:
    path = tmp_path / CATALOG_FILE
    with Catalog(path, read_only=False) as catalog:
        catalog.set_model("old-model", {}, 8)
        video_id = write_video(catalog, "/videos/a.mp4", "hash-a", unit_vectors(2, 8, 0))
    # Turn the file into a schema version 1 catalog, as the previous release wrote it.
    connection = sqlite3.connect(path)
    connection.execute("DROP INDEX segments_video_generation")
    connection.execute("ALTER TABLE segments DROP COLUMN generation")
    connection.execute("ALTER TABLE videos DROP COLUMN generation")
    connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    connection.commit()
    connection.close()

    with Catalog(path, read_only=True) as reader:
        assert reader.count_segments() == 2
        assert reader.count_indexed_videos() == 1
        assert len(reader.list_segments(video_id)) == 2
        assert reader.get_video(video_id).generation == 0

    with Catalog(path, read_only=False) as writer:
        assert writer.get_meta("schema_version") == "2"
        assert writer.count_segments() == 2
        assert writer.get_video(video_id).generation == 0
        assert writer.write_generation() == 0
