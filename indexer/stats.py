"""Per-stage timings and counts of an ingest run, for the closing summary and the run record."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StageStats:
    """Time and work of one pipeline stage."""

    seconds: float = 0.0  # busy time: wall time, or summed worker CPU time for decode
    videos: int = 0  # videos the stage finished
    segments: int = 0  # segments the stage handled
    frames: int = 0  # frames the stage handled

    def throughput(self) -> dict[str, float | None]:
        """Return videos/s, segments/s and frames/s over the stage's busy time."""
        if self.seconds <= 0:
            return {"videos_per_s": None, "segments_per_s": None, "frames_per_s": None}
        return {
            "videos_per_s": self.videos / self.seconds,
            "segments_per_s": self.segments / self.seconds,
            "frames_per_s": self.frames / self.seconds,
        }


@dataclass
class RunStats:
    """Everything the closing summary and the run record report."""

    discovered: int = 0  # video files found
    hidden_skipped: int = 0  # hidden files and folders skipped by discovery
    ignored_files: int = 0  # files discovery found that are not videos
    indexed: int = 0  # videos decoded, encoded and written
    skipped_unchanged: int = 0  # same size and mtime, or same content after a touch
    duplicates: int = 0  # recorded as duplicates of already indexed content
    removed: int = 0  # removed by --prune
    failed_by_kind: Counter[str] = field(default_factory=Counter)  # failure kind -> count
    segments_written: int = 0  # new vectors
    missing_paths: list[str] = field(default_factory=list)  # requested paths that do not exist
    stages: dict[str, StageStats] = field(default_factory=dict)  # stage name -> stats
    pipeline_seconds: float = 0.0  # wall time of the overlapped decode + encode + write loop
    wall_seconds: float = 0.0  # wall time of the whole run
    snapshot_id: str | None = None  # the snapshot published at the end
    vector_count: int | None = None  # vectors in that snapshot
    index_type: str | None = None  # flat, hnsw or ivfpq
    recall_at_10: float | None = None  # measured recall of an approximate index
    decode_restarts: int = 0  # decode workers restarted after a timeout or crash

    @property
    def failed(self) -> int:
        """Number of files recorded as failed in this run."""
        return sum(self.failed_by_kind.values())

    def stage(self, name: str) -> StageStats:
        """Return the stats of a stage, creating them on first use."""
        return self.stages.setdefault(name, StageStats())

    @contextmanager
    def timed(self, name: str) -> Iterator[StageStats]:
        """Add the wall time of the body to a stage."""
        stats = self.stage(name)
        started = time.perf_counter()
        try:
            yield stats
        finally:
            stats.seconds += time.perf_counter() - started

    def to_record(self) -> dict[str, Any]:
        """Return a JSON-ready dict for the catalog's runs table."""
        frames = self.stage("encode").frames
        return {
            "discovered": self.discovered,
            "hidden_skipped": self.hidden_skipped,
            "ignored_files": self.ignored_files,
            "indexed": self.indexed,
            "skipped_unchanged": self.skipped_unchanged,
            "duplicates": self.duplicates,
            "removed": self.removed,
            "failed": self.failed,
            "failed_by_kind": dict(self.failed_by_kind),
            "segments_written": self.segments_written,
            "missing_paths": self.missing_paths,
            "stages": {
                name: {**asdict(stats), **stats.throughput()} for name, stats in self.stages.items()
            },
            "pipeline_seconds": self.pipeline_seconds,
            "pipeline_videos_per_s": _rate(self.indexed, self.pipeline_seconds),
            "pipeline_frames_per_s": _rate(frames, self.pipeline_seconds),
            "wall_seconds": self.wall_seconds,
            "snapshot_id": self.snapshot_id,
            "vector_count": self.vector_count,
            "index_type": self.index_type,
            "recall_at_10": self.recall_at_10,
            "decode_restarts": self.decode_restarts,
        }


def _rate(count: int, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None
