"""Tests of the indexer's stages on their own: settings, discovery and the decode worker pool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from indexer import interrupts
from indexer.decode import DecodeEvent, DecodeJob, DecodePool, DecodeStats
from indexer.discover import DiscoveredFile, discover
from indexer.interrupts import Terminated
from indexer.pipeline import _IngestLoop
from indexer.plan import PlannedFile
from indexer.settings import IndexerSettings
from indexer.stats import RunStats
from shared.index_store import CATALOG_FILE, Catalog
from videos import make_4k, make_h264

ENV_NAMES = [
    "PIG_INDEX_DIR", "PIG_CHECKPOINT", "PIG_MODEL", "PIG_PRETRAINED", "PIG_HEAD", "PIG_DEVICE",
    "PIG_PRECISION", "PIG_FRAMES", "PIG_SEGMENT_SECONDS", "PIG_WORKERS", "PIG_BATCH_SIZE",
    "PIG_DECODE_TIMEOUT",
]  # fmt: skip


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIG_WORKERS", "3")
    monkeypatch.setenv("PIG_SEGMENT_SECONDS", "7.5")
    monkeypatch.setenv("PIG_MODEL", "pig-tiny")

    settings = IndexerSettings()
    assert settings.workers == 3
    assert settings.segment_seconds == 7.5
    assert settings.model == "pig-tiny"
    assert IndexerSettings(workers=5).workers == 5, "an explicit value must win over the environment"


def test_settings_cover_documented_env_names() -> None:
    fields = {f"PIG_{name.upper()}" for name in IndexerSettings.model_fields}
    assert set(ENV_NAMES) <= fields


def test_settings_reject_two_model_sources() -> None:
    with pytest.raises(ValueError, match="only one"):
        IndexerSettings(checkpoint=Path("ck"), model="pig-tiny")


def test_discover_follows_no_loops(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    clip = make_h264(root / "sub", "clip.mp4")
    shutil.copy(clip, root / "no_extension")
    (root / "notes.txt").write_text("not a video")
    (root / "random.bin").write_bytes(os.urandom(1024))
    (root / ".hidden.mp4").write_bytes(clip.read_bytes())
    os.symlink(root, root / "sub" / "loop")
    os.symlink(clip, root / "link_to_clip.mp4")

    result = discover([root, root / "sub"])

    found = [Path(f.path).name for f in result.files]
    assert found == ["no_extension", "clip.mp4"]
    assert result.skipped_loops >= 1
    assert result.missing == []
    assert result.hidden_skipped == 1


def test_discover_names_broken_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_h264(tmp_path, "good.mp4")
    os.symlink(tmp_path / "gone.mp4", tmp_path / "broken.mp4")
    with caplog.at_level("WARNING", logger="indexer.discover"):
        found = discover([tmp_path])
    assert [Path(f.path).name for f in found.files] == ["good.mp4"]
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"skipping {tmp_path / 'broken.mp4'}: cannot read its file status" in m for m in messages), messages


def test_discover_reports_missing_path(tmp_path: Path) -> None:
    result = discover([tmp_path / "absent"])
    assert result.missing == [str(tmp_path / "absent")]
    assert result.files == []


def _collect(pool: DecodePool, task_id: int, limit_s: float = 120.0) -> list:
    events = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for event in pool.poll(0.1):
            assert event.task_id == task_id
            events.append(event)
            if event.kind in ("done", "error"):
                return events
    raise AssertionError(f"no final event for task {task_id} within {limit_s} s")


def test_decode_pool_timeout_then_recovers(tmp_path: Path) -> None:
    big = make_4k(tmp_path)
    good = make_h264(tmp_path, "good.mp4", seconds=2.0)
    # A fresh worker spends far longer than 10 ms importing the decoder and decoding 4K frames.
    with DecodePool(workers=1, timeout_s=0.01) as pool:
        first_pid = pool.worker_pids()[0]
        pool.submit(DecodeJob(1, str(big), 10.0, 4, 32))
        events = _collect(pool, 1)
        assert events[-1].kind == "error"
        assert events[-1].error_kind == "decode_timeout"
        assert pool.stats.timeouts == 1
        assert pool.worker_pids()[0] != first_pid, "the timed-out worker must be replaced"

        pool.timeout_s = 120.0
        pool.submit(DecodeJob(2, str(good), 1.0, 4, 32))
        events = _collect(pool, 2)
        assert events[0].kind == "info"
        assert len(events[0].bounds) == 2
        frames = [e.frames for e in events if e.kind == "frames"]
        assert frames[0].shape == (2, 4, 32, 32, 3)
        assert events[-1].kind == "done"


def test_decode_pool_worker_crash(tmp_path: Path) -> None:
    big = make_4k(tmp_path)
    good = make_h264(tmp_path, "good.mp4")
    with DecodePool(workers=1, timeout_s=120.0) as pool:
        pool.submit(DecodeJob(1, str(big), 10.0, 4, 32))
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        events = _collect(pool, 1)
        assert events[-1].kind == "error"
        assert events[-1].error_kind == "decoder_crash"
        assert pool.stats.crashes == 1

        pool.submit(DecodeJob(2, str(good), 10.0, 4, 32))
        assert _collect(pool, 2)[-1].kind == "done"


class _TimingOutPool:
    """A stand-in for DecodePool whose every job times out, all workers in the same poll."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.jobs: list[DecodeJob] = []
        self.stats = DecodeStats()

    @property
    def idle_workers(self) -> int:
        return self.workers - len(self.jobs)

    @property
    def busy_workers(self) -> int:
        return len(self.jobs)

    def submit(self, job: DecodeJob) -> bool:
        self.jobs.append(job)
        return True

    def poll(self, timeout_s: float) -> list[DecodeEvent]:
        events = [DecodeEvent("error", job.task_id, error_kind="decode_timeout", reason="timed out")
                  for job in self.jobs]
        self.jobs = []
        return events


@pytest.mark.parametrize("workers", [1, 4])
def test_ingest_loop_records_every_timeout(tmp_path: Path, workers: int) -> None:
    files = [PlannedFile(DiscoveredFile(f"/videos/{i:02d}.mp4", 100, 1), content_hash=str(i)) for i in range(10)]
    model = SimpleNamespace(config=SimpleNamespace(num_frames=4, image_size=32))
    settings = IndexerSettings(index_dir=tmp_path, workers=workers, batch_size=2)
    stats = RunStats()
    with Catalog(tmp_path / CATALOG_FILE, read_only=False) as catalog:
        loop = _IngestLoop(settings, model, catalog, stats, tqdm(disable=True), _TimingOutPool(workers))
        loop.run(files)
        assert stats.failed == len(files)
        assert catalog.count_by_status() == {"failed": len(files)}


def test_deferred_signal_raised_at_block_end() -> None:
    steps = []
    with pytest.raises(Terminated), interrupts.install():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs at the next bytecode; give it every chance
            steps.append("after the signal")
        steps.append("after the block")
    assert steps == ["after the signal"]


def test_undeferred_signal_raised_at_once() -> None:
    with pytest.raises(KeyboardInterrupt) as caught, interrupts.install():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert not isinstance(caught.value, Terminated)


def test_install_restores_handlers() -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with interrupts.install():
        assert signal.getsignal(signal.SIGTERM) is not before[1]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_commit_interrupt_keeps_counts_equal(tmp_path: Path) -> None:
    # The signal arrives in the middle of a write transaction. The batch must commit whole and
    # be counted before the interrupt unwinds, so that the run's report matches the catalog.
    files = [PlannedFile(DiscoveredFile(f"/videos/{i:02d}.mp4", 100, 1), content_hash=str(i)) for i in range(10)]
    model = SimpleNamespace(config=SimpleNamespace(num_frames=4, image_size=32))
    settings = IndexerSettings(index_dir=tmp_path, workers=4, batch_size=2)
    stats = RunStats()
    with Catalog(tmp_path / CATALOG_FILE, read_only=False) as catalog:
        write_failed = catalog.write_failed
        calls = []

        def write_failed_then_signal(*args: object) -> None:
            write_failed(*args)
            calls.append(args[0])
            if len(calls) == 6:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)

        catalog.write_failed = write_failed_then_signal  # type: ignore[method-assign]
        loop = _IngestLoop(settings, model, catalog, stats, tqdm(disable=True), _TimingOutPool(4))
        with pytest.raises(Terminated), interrupts.install():
            loop.run(files)
        committed = catalog.count_by_status().get("failed", 0)
    assert 6 <= committed < len(files)
    assert stats.failed == committed


@pytest.mark.parametrize(("first", "second", "status"), [(signal.SIGINT, signal.SIGINT, 130),
                                                         (signal.SIGINT, signal.SIGTERM, 143)])
def test_second_signal_stops_at_once(first: int, second: int, status: int) -> None:
    script = (
        "import os, signal, time\n"
        "from indexer import interrupts\n"
        "with interrupts.install():\n"
        "    try:\n"
        f"        os.kill(os.getpid(), {int(first)})\n"
        "        time.sleep(5)\n"
        "    finally:\n"
        "        print('cleaning up', flush=True)\n"
        f"        os.kill(os.getpid(), {int(second)})\n"
        "        time.sleep(5)\n"
        "        print('clean-up finished', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == status, result.stderr
    assert result.stdout == "cleaning up\n"
    assert "stopping at once; committed videos are kept" in result.stderr
