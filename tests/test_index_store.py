"""Tests of the SQLite catalog and FAISS snapshots, with real SQLite files and FAISS indexes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from shared.index_store import (
    CATALOG_FILE,
    Catalog,
    CatalogError,
    IndexPolicy,
    ProbeFields,
    SegmentToWrite,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    WriterLock,
    build_index,
    choose_index_type,
    list_snapshot_ids,
    load_snapshot,
    publish_snapshot,
    read_current_snapshot_id,
)

DIM = 16


def unit_vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add_video(catalog: Catalog, path: str, vectors: np.ndarray, content_hash: str | None = None) -> int:
    segments = [
        SegmentToWrite(segment_index=i, start_s=10.0 * i, end_s=10.0 * (i + 1), vector=v)
        for i, v in enumerate(vectors)
    ]
    with catalog.transaction():
        return catalog.write_indexed(
            path, 100, 1, content_hash or path, ProbeFields(duration=10.0 * len(vectors)), segments
        )


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    catalog = Catalog(tmp_path / CATALOG_FILE, read_only=False)
    catalog.set_model("fp-test", {"model_name": "test"}, DIM)
    catalog.close()
    return tmp_path


def test_catalog_round_trip(index_dir: Path) -> None:
    vectors = unit_vectors(3, seed=1)
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        video_id = add_video(catalog, "/videos/a.mp4", vectors)

    with Catalog(index_dir / CATALOG_FILE, read_only=True) as reader:
        assert reader.model_fingerprint() == "fp-test"
        assert reader.count_indexed_videos() == 1
        segments = reader.list_segments(video_id)
        assert [s.segment_index for s in segments] == [0, 1, 2]
        assert segments[2].start_s == 20.0
        found = reader.segments_for_vector_ids([segments[1].vector_id, -1, 999999])
        assert list(found) == [segments[1].vector_id]
        assert found[segments[1].vector_id].path == "/videos/a.mp4"
        ids, stored = next(reader.iter_vectors())
        np.testing.assert_array_equal(stored, vectors)
        with pytest.raises(CatalogError):
            reader.set_meta("x", "y")


def test_reindex_replaces_segments(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        first = add_video(catalog, "/videos/a.mp4", unit_vectors(3, seed=1))
        old_ids = {s.vector_id for s in catalog.list_segments(first)}
        second = add_video(catalog, "/videos/a.mp4", unit_vectors(2, seed=2))
        new_ids = {s.vector_id for s in catalog.list_segments(second)}

        assert first == second
        assert catalog.count_segments() == 2
        assert not old_ids & new_ids, "vector ids must never be reused"


def test_duplicate_takes_over_on_remove(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        original = add_video(catalog, "/videos/a.mp4", unit_vectors(2, seed=1), content_hash="h")
        with catalog.transaction():
            catalog.write_duplicate("/videos/copy.mp4", 100, 1, "h", original)
        assert catalog.get_video(original).duplicate_paths == ("/videos/copy.mp4",)

        with catalog.transaction():
            assert catalog.mark_removed("/videos/a.mp4")

        survivor = catalog.get_video_by_path("/videos/copy.mp4")
        assert survivor.status == "indexed"
        assert survivor.id == original
        assert len(catalog.list_segments(survivor.id)) == 2
        assert catalog.get_video_by_path("/videos/a.mp4").status == "removed"
        assert catalog.count_segments() == 2


def test_read_only_catalog_across_threads(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/a.mp4", unit_vectors(4, seed=1))
    reader = Catalog(index_dir / CATALOG_FILE, read_only=True)
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                results.append(reader.count_indexed_videos() + len(reader.list_segments(1)))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.close()
    assert errors == []
    assert results == [5] * 80


def test_snapshot_search_matches_brute_force(index_dir: Path) -> None:
    vectors = unit_vectors(40, seed=3)
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/a.mp4", vectors[:25])
        add_video(catalog, "/videos/b.mp4", vectors[25:])
        manifest = publish_snapshot(index_dir, catalog)
        ids = catalog.segment_ids()

    assert read_current_snapshot_id(index_dir) == manifest.snapshot_id
    snapshot = load_snapshot(index_dir)
    assert snapshot.vector_count == 40
    assert snapshot.model_fingerprint == "fp-test"

    queries = unit_vectors(5, seed=4)
    scores, found = snapshot.search(queries, k=5)
    expected_rows = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(found, ids[expected_rows])
    np.testing.assert_allclose(scores, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :5], atol=1e-5)

    scores, found = snapshot.search(queries[:1], k=50)
    assert (found[0, 40:] == -1).all()
    assert np.isneginf(scores[0, 40:]).all()


def test_batched_blas_search_matches_scan(index_dir: Path) -> None:
    # The search service lowers FAISS's BLAS threshold so that a micro-batch of queries costs one
    # matrix product. Both paths must return the same ranking.
    vectors = unit_vectors(3000, seed=5)
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/long.mp4", vectors)
        publish_snapshot(index_dir, catalog)
    snapshot = load_snapshot(index_dir)
    queries = unit_vectors(16, seed=6)
    default = faiss.cvar.distance_compute_blas_threshold
    try:
        faiss.cvar.distance_compute_blas_threshold = 1_000_000
        scan_scores, scan_ids = snapshot.search(queries, k=40)
        faiss.cvar.distance_compute_blas_threshold = 2
        blas_scores, blas_ids = snapshot.search(queries, k=40)
    finally:
        faiss.cvar.distance_compute_blas_threshold = default
    np.testing.assert_array_equal(blas_ids, scan_ids)
    np.testing.assert_allclose(blas_scores, scan_scores, atol=1e-5)


def test_empty_snapshot_search(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        publish_snapshot(index_dir, catalog)
    snapshot = load_snapshot(index_dir)
    scores, ids = snapshot.search(unit_vectors(2, seed=1), k=3)
    assert ids.shape == (2, 3)
    assert (ids == -1).all()


def test_no_snapshot_raises(tmp_path: Path) -> None:
    with pytest.raises(SnapshotNotFoundError):
        load_snapshot(tmp_path)


def test_truncated_snapshot_falls_back(index_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/a.mp4", unit_vectors(3, seed=1))
        first = publish_snapshot(index_dir, catalog)
        add_video(catalog, "/videos/b.mp4", unit_vectors(2, seed=2))
        second = publish_snapshot(index_dir, catalog)

    index_file = index_dir / "snapshots" / second.snapshot_id / "index.faiss"
    data = index_file.read_bytes()
    index_file.write_bytes(data[: len(data) // 2])

    with pytest.raises(SnapshotCorruptError, match="truncated"):
        load_snapshot(index_dir, second.snapshot_id)
    with caplog.at_level(logging.WARNING, logger="shared.index_store.snapshot"):
        snapshot = load_snapshot(index_dir)
    assert snapshot.snapshot_id == first.snapshot_id
    assert snapshot.vector_count == 3
    assert any("previous snapshot" in record.message for record in caplog.records)


def test_altered_snapshot_detected(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/a.mp4", unit_vectors(3, seed=1))
        manifest = publish_snapshot(index_dir, catalog)
    index_file = index_dir / "snapshots" / manifest.snapshot_id / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[-5] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptError, match="sha256"):
        load_snapshot(index_dir)


def test_garbage_collection_keeps_recent(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        published = []
        for seed in range(5):
            add_video(catalog, f"/videos/{seed}.mp4", unit_vectors(1, seed=seed))
            published.append(publish_snapshot(index_dir, catalog, keep=1).snapshot_id)
        assert catalog.snapshot_vector_count(published[0]) is None

    # keep=1 is raised to the minimum of 2.
    assert list_snapshot_ids(index_dir) == published[-2:]
    manifest = json.loads((index_dir / "snapshots" / published[-1] / "manifest.json").read_text())
    assert manifest["vector_count"] == 5


def test_index_type_choice() -> None:
    policy = IndexPolicy(approx_threshold=1000, memory_budget_bytes=10**9)
    assert choose_index_type(999, 512, policy) == "flat"
    assert choose_index_type(1000, 512, policy) == "hnsw"
    assert choose_index_type(10**7, 512, policy) == "ivfpq"
    assert choose_index_type(5, 512, IndexPolicy(index_type="hnsw")) == "hnsw"


def test_hnsw_recall_and_search_params(index_dir: Path) -> None:
    vectors = unit_vectors(600, seed=5)
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/long.mp4", vectors)
        manifest = publish_snapshot(index_dir, catalog, IndexPolicy(approx_threshold=100))
    assert manifest.index_type == "hnsw"
    assert manifest.recall_at_10 is not None
    assert 0.8 <= manifest.recall_at_10 <= 1.0

    snapshot = load_snapshot(index_dir)
    inner = faiss.downcast_index(snapshot.index.index)
    ef_before = inner.hnsw.efSearch
    scores, ids = snapshot.search(vectors[:3], k=10, params=faiss.SearchParametersHNSW(efSearch=256))
    assert inner.hnsw.efSearch == ef_before, "per-call parameters must not change the shared index"
    assert ids.shape == (3, 10)
    assert (scores[:, 0] > 0.999).all(), "each stored vector must find itself first"


def test_ivfpq_build_measures_recall() -> None:
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((10_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = build_index(np.arange(10_000), vectors, 32, IndexPolicy(index_type="ivfpq"))
    assert built.index_type == "ivfpq"
    assert built.index.ntotal == 10_000
    assert built.recall_at_10 is not None
    assert 0.0 < built.recall_at_10 <= 1.0


def test_segments_list_duplicate_paths(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        original = add_video(catalog, "/videos/a.mp4", unit_vectors(2, seed=6), content_hash="h")
        other = add_video(catalog, "/videos/b.mp4", unit_vectors(1, seed=7))
        with catalog.transaction():
            catalog.write_duplicate("/archive/z.mp4", 100, 1, "h", original)
            catalog.write_duplicate("/archive/y.mp4", 100, 1, "h", original)

    with Catalog(index_dir / CATALOG_FILE) as reader:
        segments = reader.list_segments(original)
        assert segments[0].duplicate_paths == ("/archive/y.mp4", "/archive/z.mp4")
        assert segments[1].paths == ("/videos/a.mp4", "/archive/y.mp4", "/archive/z.mp4")
        ids = [s.vector_id for s in segments] + [s.vector_id for s in reader.list_segments(other)]
        found = reader.segments_for_vector_ids(ids)
        assert found[ids[0]].paths == ("/videos/a.mp4", "/archive/y.mp4", "/archive/z.mp4")
        assert found[ids[2]].paths == ("/videos/b.mp4",)
        assert reader.get_video(original).paths == segments[0].paths


def _read_only_mount_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs `unshare -m` to bind-mount read-only")
def test_readers_on_read_only_mount(index_dir: Path) -> None:
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        add_video(catalog, "/videos/a.mp4", unit_vectors(2, seed=8))
    with WriterLock(index_dir):
        pass  # leaves writer.lock behind, as every ingest does
    # Closing the last connection removed the -wal and -shm files, as after any clean exit.
    assert not (index_dir / f"{CATALOG_FILE}-shm").exists()
    script = (
        "import sys; from shared.index_store import Catalog, WriterLock; "
        "c = Catalog(sys.argv[1] + '/catalog.sqlite'); print(c.count_segments()); "
        "print(WriterLock(sys.argv[1]).is_held_by_other())"
    )
    mount = f"mount --bind -o ro {index_dir} {index_dir} && {sys.executable} -c \"{script}\" {index_dir}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "False"]


def test_catalog_reads_avoid_segment_table_scans(index_dir: Path) -> None:
    # Segment rows hold the vectors, so a table scan reads the whole collection. The planner's
    # choice does not depend on the row count here (no ANALYZE), so a small catalog shows it.
    with Catalog(index_dir / CATALOG_FILE, read_only=False) as catalog:
        video_ids = [add_video(catalog, f"/videos/{i}.mp4", unit_vectors(3, seed=i)) for i in range(4)]
    with Catalog(index_dir / CATALOG_FILE, read_only=True) as reader:
        some_ids = reader.segment_ids()[:2].tolist()
        connection = reader._connection()
        statements: list[str] = []
        connection.set_trace_callback(statements.append)
        reader.count_segments()
        reader.count_indexed_videos()
        reader.list_segments(video_ids[1])
        reader.segments_for_vector_ids(some_ids)
        reader.indexed_videos_without_segments()
        connection.set_trace_callback(None)
        selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and "segments" in sql]
        assert len(selects) >= 5
        for sql in selects:
            plan = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql).fetchall()]
            # Allowed on segments: a scan of a covering index (no vectors read), or a search by
            # video id or by row id. A search by generation alone visits every row of it.
            segment_steps = [step for step in plan if step.split(" USING")[0] in ("SCAN segments", "SCAN s",
                                                                                  "SEARCH segments", "SEARCH s")]
            bad = [step for step in segment_steps
                   if "COVERING INDEX" not in step and "video_id=" not in step and "PRIMARY KEY" not in step]
            assert not bad, f"{sql} reads segment rows it does not need: {plan}"
