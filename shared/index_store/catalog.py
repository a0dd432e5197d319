"""The SQLite catalog of an index directory: videos, segments (with their vectors), runs.

The catalog is the durable source of truth. Every segment row stores its vector as a float32
BLOB, so any FAISS snapshot can be rebuilt from the catalog alone. A segment's row id is its
FAISS vector id; ids come from AUTOINCREMENT and are never reused, so an older snapshot that a
reader still serves can never map one of its ids to a different segment.

Duplicates: a file whose content hash equals an indexed video's is stored with status
``duplicate`` and ``duplicate_of`` pointing at that video. Its content is indexed once, and
``VideoRecord.duplicate_paths`` lists the other names.

Generations: every video and segment row carries the generation that wrote it. Snapshots,
counts and segment listings see only the live generation (meta ``generation``). An in-place
rebuild (``start_rebuild``) writes the new model's rows under the next generation and leaves
the live rows in place, so a reader keeps serving the old snapshot completely.
``finish_rebuild`` then makes the new generation live in one commit. The rows of older
generations stay until the next writer opens the catalog (``delete_retired_rows``), because a
running service resolves the ids of the old snapshot until it loads the new one. Only
``get_video`` and ``segments_for_vector_ids``, the service's lookups of FAISS ids, see them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shared.index_store.errors import CatalogError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Meta keys of an unfinished rebuild: its generation and the model it writes vectors of.
_REBUILD_KEYS = ("rebuild_generation", "rebuild_fingerprint", "rebuild_model_config", "rebuild_embed_dim")

# The live generation as an SQL expression, read in the same statement as the rows it filters.
_LIVE_GENERATION = "(SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0))"

# Video rows that listings and counts see: the live generation and an unfinished rebuild's.
# Rows of older generations are retired, kept only for the ids of an old snapshot.
_VISIBLE_VIDEO = f"generation >= {_LIVE_GENERATION}"

# Video statuses stored in videos.status.
STATUS_INDEXED = "indexed"
STATUS_FAILED = "failed"
STATUS_REMOVED = "removed"
STATUS_DUPLICATE = "duplicate"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    duration REAL,
    fps REAL,
    frame_count INTEGER,
    width INTEGER,
    height INTEGER,
    codec TEXT,
    rotation INTEGER,
    status TEXT NOT NULL CHECK (status IN ('indexed', 'failed', 'removed', 'duplicate')),
    duplicate_of INTEGER REFERENCES videos(id),
    failure_kind TEXT,
    failure_reason TEXT,
    updated_at TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS videos_content_hash ON videos(content_hash);
CREATE INDEX IF NOT EXISTS videos_duplicate_of ON videos(duplicate_of);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id INTEGER NOT NULL REFERENCES videos(id),
    segment_index INTEGER NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    vector BLOB NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS segments_video_id ON segments(video_id);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    vector_count INTEGER NOT NULL,
    index_type TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

_VIDEO_COLUMNS = (
    "id, path, size, mtime_ns, content_hash, duration, fps, frame_count, width, height, codec, "
    "rotation, status, duplicate_of, failure_kind, failure_reason, updated_at, generation"
)
# Schema version 1 has no generation columns, so all its rows belong to generation 0.
_VIDEO_COLUMNS_V1 = _VIDEO_COLUMNS.replace(", generation", ", 0 AS generation")


def utc_now() -> str:
    """Return the current UTC time as an ISO 8601 string with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ProbeFields:
    """Probe results stored with a video; every field may be unknown."""

    duration: float | None = None  # seconds
    fps: float | None = None  # average frames per second
    frame_count: int | None = None  # as declared or counted by the prober
    width: int | None = None  # pixels, before rotation
    height: int | None = None  # pixels, before rotation
    codec: str | None = None  # decoder name, e.g. "h264"
    rotation: int | None = None  # degrees from the display matrix


@dataclass(frozen=True)
class VideoRecord:
    """One row of the videos table."""

    id: int  # catalog video id
    path: str  # absolute real path of the file
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds since the epoch
    content_hash: str | None  # hex BLAKE2b of the file's bytes
    probe: ProbeFields  # probe results at indexing time
    status: str  # indexed, failed, removed or duplicate
    duplicate_of: int | None  # for duplicates: the video id whose segments hold this content
    failure_kind: str | None  # for failures: the error kind, e.g. "truncated"
    failure_reason: str | None  # for failures: a one-line reason
    updated_at: str  # ISO 8601 UTC time of the last change
    duplicate_paths: tuple[str, ...] = ()  # other files with the same content
    generation: int = 0  # the catalog generation that last wrote the row

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path of the video's content: ``path`` first, then ``duplicate_paths``."""
        return (self.path, *self.duplicate_paths)


@dataclass(frozen=True)
class SegmentRecord:
    """One row of the segments table, joined with its video's path."""

    vector_id: int  # the FAISS vector id (segments.id)
    video_id: int  # catalog video id
    segment_index: int  # 0-based position of the segment within its video
    start_s: float  # segment start, seconds from the start of the video
    end_s: float  # segment end, seconds
    path: str  # the video's path
    duplicate_paths: tuple[str, ...] = ()  # other files with the video's content, sorted

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path of the segment's video: ``path`` first, then ``duplicate_paths``.

        A path filter (such as a search's path prefix) should match any of these, because a
        byte-identical copy is indexed once under the first path only.
        """
        return (self.path, *self.duplicate_paths)


@dataclass(frozen=True)
class RebuildState:
    """An unfinished in-place rebuild, as stored in the catalog's meta table."""

    generation: int  # the generation its rows are written under
    fingerprint: str  # fingerprint of the model it re-encodes with
    model_config: dict[str, Any]  # that model's config
    embed_dim: int  # that model's vector width D
    videos_done: int  # video rows already written by the rebuild and not removed since


@dataclass(frozen=True)
class SegmentToWrite:
    """A segment and its vector, as handed to the catalog by the indexer."""

    segment_index: int  # 0-based position within the video
    start_s: float  # seconds
    end_s: float  # seconds
    vector: np.ndarray  # [D] float32, L2-normalised


class Catalog:
    """The SQLite catalog of one index directory.

    ``Catalog(path, read_only=True)`` opens an existing catalog for reading; each thread gets its
    own connection, so one instance can be shared by the threads of a server. A writable catalog
    (``read_only=False``) creates the file and schema if needed and must be used from one thread.
    Opening it deletes the retired rows of a finished rebuild, so open it only as the writer
    holding the index directory's ``WriterLock``.
    """

    def __init__(self, path: str | Path, read_only: bool = True) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._generations = False  # whether the schema has generation columns (version 2+)
        if read_only:
            if not self.path.is_file():
                raise CatalogError(
                    f"catalog {self.path} not found; run `indexer ingest` on this index "
                    f"directory first"
                )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = self._connection()
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            self._migrate(connection)
            self.delete_retired_rows()

    # Connections

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self.read_only:
            connection = self._connect_read_only()
        else:
            # Autocommit mode; transactions are explicit (see transaction()).
            connection = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
        connection.row_factory = sqlite3.Row
        self._local.connection = connection
        with self._connections_lock:
            self._connections.append(connection)
        return connection

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
            return connection
        except sqlite3.OperationalError:
            connection.close()
            if os.access(self.path.parent, os.W_OK):
                raise
        # A WAL database whose -shm file is missing cannot be opened read-only in a directory
        # this process cannot write to (a read-only mount, for example), because SQLite must
        # create that file. Without it no writer can be active, so the file is read as
        # immutable. NOTE: a connection opened this way does not see later commits of a writer
        # that has write access to the directory.
        logger.info("catalog %s is in a read-only directory; reading it as immutable", self.path)
        return sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=30.0, check_same_thread=False)

    def close(self) -> None:
        """Close every connection this instance opened, in any thread."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                connection.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row["value"]) > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.path} has schema version {row['value']}, newer than this "
                    f"program's {SCHEMA_VERSION}; upgrade the program"
                )
            elif int(row["value"]) == 1:
                # Version 2 adds the generation columns, and every existing row is generation 0.
                for table in ("videos", "segments"):
                    connection.execute(
                        f"ALTER TABLE {table} ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"
                    )
                connection.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
                logger.info("upgraded catalog %s to schema version %d", self.path, SCHEMA_VERSION)
            # An index on (video_id, generation) serves per-video lookups and counts of a
            # generation without reading the vector BLOBs. An index on generation alone made
            # SQLite scan a whole generation per video: counting the indexed videos of a
            # 1M-segment catalog took minutes instead of 0.1 s.
            connection.execute("DROP INDEX IF EXISTS segments_generation")
            connection.execute(
                "CREATE INDEX IF NOT EXISTS segments_video_generation ON segments(video_id, generation)"
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._generations = True

    def _has_generations(self) -> bool:
        # A read-only reader of a version 1 catalog checks again on each call until a writer
        # upgrades the file, because it cannot add the columns itself.
        if not self._generations:
            columns = self._connection().execute("PRAGMA table_info(segments)").fetchall()
            self._generations = any(column["name"] == "generation" for column in columns)
        return self._generations

    def _video_columns(self) -> str:
        return _VIDEO_COLUMNS if self._has_generations() else _VIDEO_COLUMNS_V1

    def _live(self, alias: str = "") -> str:
        """Return an SQL condition that keeps only rows of the live generation."""
        if not self._has_generations():
            return "1 = 1"
        prefix = f"{alias}." if alias else ""
        return f"{prefix}generation = {_LIVE_GENERATION}"

    def _visible(self, alias: str = "") -> str:
        """Return an SQL condition that drops video rows retired by a finished rebuild."""
        if not self._has_generations():
            return "1 = 1"
        prefix = f"{alias}." if alias else ""
        return f"{prefix}{_VISIBLE_VIDEO}"

    def _require_writable(self) -> sqlite3.Connection:
        if self.read_only:
            raise CatalogError(f"catalog {self.path} is open read-only; open it with read_only=False")
        return self._connection()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one IMMEDIATE transaction: committed on success, rolled back on error."""
        connection = self._require_writable()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # Read side

    def model_fingerprint(self) -> str | None:
        """Return the fingerprint of the model the index was built with, or None when empty."""
        return self.get_meta("model_fingerprint")

    def get_meta(self, key: str) -> str | None:
        """Return one value of the meta table, or None."""
        row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def embed_dim(self) -> int | None:
        """Return the vector width D stored with the model, or None before the first ingest."""
        value = self.get_meta("embed_dim")
        return None if value is None else int(value)

    def live_generation(self) -> int:
        """Return the generation whose rows snapshots, counts and listings see."""
        value = self.get_meta("generation")
        return 0 if value is None else int(value)

    def rebuild_state(self) -> RebuildState | None:
        """Return the unfinished in-place rebuild, or None when no rebuild is in progress."""
        values = {key: self.get_meta(key) for key in _REBUILD_KEYS}
        if values["rebuild_generation"] is None:
            return None
        generation = int(values["rebuild_generation"])
        # A video that `indexer remove` removed after the rebuild wrote it is not counted.
        row = self._connection().execute(
            "SELECT COUNT(*) AS n FROM videos WHERE generation = ? AND status != ?",
            (generation, STATUS_REMOVED),
        ).fetchone()
        return RebuildState(
            generation=generation,
            fingerprint=str(values["rebuild_fingerprint"]),
            model_config=json.loads(values["rebuild_model_config"] or "{}"),
            embed_dim=int(values["rebuild_embed_dim"] or 0),
            videos_done=int(row["n"]),
        )

    def write_generation(self) -> int:
        """Return the generation that writes go to: the rebuild's while one is unfinished."""
        value = self.get_meta("rebuild_generation")
        return self.live_generation() if value is None else int(value)

    def _write_embed_dim(self) -> int | None:
        value = self.get_meta("rebuild_embed_dim")
        return self.embed_dim() if value is None else int(value)

    def count_indexed_videos(self) -> int:
        """Return the number of videos with status ``indexed`` and live segments.

        Duplicates are not counted, and neither are videos that only an unfinished rebuild
        has written so far.
        """
        row = self._connection().execute(
            "SELECT COUNT(*) AS n FROM videos v WHERE v.status = ? AND EXISTS "
            f"(SELECT 1 FROM segments s WHERE s.video_id = v.id AND {self._live('s')})",
            (STATUS_INDEXED,),
        ).fetchone()
        return int(row["n"])

    def count_segments(self) -> int:
        """Return the number of live segment rows, which is the vector count a snapshot must have."""
        row = self._connection().execute(
            f"SELECT COUNT(*) AS n FROM segments WHERE {self._live()}"
        ).fetchone()
        return int(row["n"])

    def indexed_videos_without_segments(self) -> list[str]:
        """Return the paths of indexed videos that have no segment of their own generation.

        Video rows retired by a finished rebuild are not checked.
        """
        if self._has_generations():
            condition = "s.generation = v.generation"
        else:
            condition = "1 = 1"
        rows = self._connection().execute(
            f"SELECT v.path FROM videos v WHERE v.status = ? AND {self._visible('v')} AND NOT EXISTS "
            f"(SELECT 1 FROM segments s WHERE s.video_id = v.id AND {condition}) ORDER BY v.path",
            (STATUS_INDEXED,),
        ).fetchall()
        return [str(row["path"]) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Return the number of videos per status, leaving out rows retired by a finished rebuild."""
        rows = self._connection().execute(
            f"SELECT status, COUNT(*) AS n FROM videos WHERE {self._visible()} GROUP BY status"
        ).fetchall()
        return {str(row["status"]): int(row["n"]) for row in rows}

    def segments_for_vector_ids(self, ids: Iterable[int]) -> dict[int, SegmentRecord]:
        """Map FAISS vector ids to their segments; ids with no row (padding -1, or removed
        since the snapshot was built) are absent from the result.

        Rows of every generation are found, including rows retired by a finished rebuild,
        because a reader keeps serving the old snapshot until it loads the new one.
        """
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        result: dict[int, SegmentRecord] = {}
        connection = self._connection()
        # SQLite limits the number of bound parameters, so look ids up in chunks.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            placeholders = ",".join("?" * len(chunk))
            rows = connection.execute(
                "SELECT s.id, s.video_id, s.segment_index, s.start_s, s.end_s, v.path "
                "FROM segments s JOIN videos v ON v.id = s.video_id "
                f"WHERE s.id IN ({placeholders})",
                chunk,
            ).fetchall()
            for row in rows:
                result[int(row["id"])] = _segment_from_row(row)
        return self._with_duplicate_paths(result)

    def list_segments(self, video_id: int) -> list[SegmentRecord]:
        """Return a video's live segments in time order."""
        rows = self._connection().execute(
            "SELECT s.id, s.video_id, s.segment_index, s.start_s, s.end_s, v.path "
            "FROM segments s JOIN videos v ON v.id = s.video_id "
            f"WHERE s.video_id = ? AND {self._live('s')} ORDER BY s.segment_index",
            (int(video_id),),
        ).fetchall()
        segments = self._with_duplicate_paths({i: _segment_from_row(row) for i, row in enumerate(rows)})
        return list(segments.values())

    def duplicate_paths_of(self, video_ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
        """Map indexed video ids to the sorted paths of their duplicates; ids without any are absent."""
        requested_ids = sorted({int(i) for i in video_ids})
        result: dict[int, list[str]] = {}
        connection = self._connection()
        for start in range(0, len(requested_ids), 500):
            chunk = requested_ids[start : start + 500]
            placeholders = ",".join("?" * len(chunk))
            rows = connection.execute(
                f"SELECT duplicate_of, path FROM videos WHERE status = ? AND duplicate_of IN ({placeholders}) "
                "ORDER BY path",
                (STATUS_DUPLICATE, *chunk),
            ).fetchall()
            for row in rows:
                result.setdefault(int(row["duplicate_of"]), []).append(str(row["path"]))
        return {video_id: tuple(paths) for video_id, paths in result.items()}

    def _with_duplicate_paths(self, segments: dict[int, SegmentRecord]) -> dict[int, SegmentRecord]:
        duplicates = self.duplicate_paths_of(s.video_id for s in segments.values())
        if not duplicates:
            return segments
        return {
            key: replace(segment, duplicate_paths=duplicates.get(segment.video_id, ()))
            for key, segment in segments.items()
        }

    def get_video(self, video_id: int) -> VideoRecord | None:
        """Return one video by id, with the paths of its duplicates, or None.

        A row retired by a finished rebuild is returned too, because the service looks up the
        videos of an old snapshot's hits by id.
        """
        row = self._connection().execute(
            f"SELECT {self._video_columns()} FROM videos WHERE id = ?", (int(video_id),)
        ).fetchone()
        return None if row is None else self._video_from_row(row)

    def get_video_by_path(self, path: str) -> VideoRecord | None:
        """Return one video by its stored path, or None; rows retired by a finished rebuild are skipped."""
        row = self._connection().execute(
            f"SELECT {self._video_columns()} FROM videos WHERE path = ? AND {self._visible()}",
            (str(path),),
        ).fetchone()
        return None if row is None else self._video_from_row(row)

    def list_videos(self, status: str | None = None) -> list[VideoRecord]:
        """Return every video, or those with one status, ordered by path.

        Rows retired by a finished rebuild are left out.
        """
        if status is None:
            rows = self._connection().execute(
                f"SELECT {self._video_columns()} FROM videos WHERE {self._visible()} ORDER BY path"
            ).fetchall()
        else:
            rows = self._connection().execute(
                f"SELECT {self._video_columns()} FROM videos WHERE status = ? AND {self._visible()} "
                "ORDER BY path",
                (status,),
            ).fetchall()
        return [self._video_from_row(row, with_duplicates=False) for row in rows]

    def find_indexed_by_hash(self, content_hash: str) -> VideoRecord | None:
        """Return the indexed video with this content hash in the write generation, or None.

        During a rebuild only videos the rebuild has already written count, because the
        others are deleted when it finishes unless it writes them too.
        """
        row = self._connection().execute(
            f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE content_hash = ? AND status = ? "
            "AND generation = ? ORDER BY id LIMIT 1",
            (content_hash, STATUS_INDEXED, self.write_generation()),
        ).fetchone()
        return None if row is None else self._video_from_row(row)

    def segment_ids(self) -> np.ndarray:
        """Return every live segment id, sorted, as int64 [N]."""
        rows = self._connection().execute(
            f"SELECT id FROM segments WHERE {self._live()} ORDER BY id"
        ).fetchall()
        return np.asarray([int(row["id"]) for row in rows], dtype=np.int64)

    def iter_vectors(
        self, chunk_size: int = 65536, rebuild: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64 [n], vectors float32 [n, D]) chunks of every live segment.

        With ``rebuild`` the segments of the unfinished rebuild are read instead.
        """
        if rebuild:
            state = self.rebuild_state()
            if state is None:
                raise CatalogError(
                    f"catalog {self.path} has no unfinished rebuild to read vectors of; call "
                    f"start_rebuild() first"
                )
            dim: int | None = state.embed_dim
            cursor = self._connection().execute(
                "SELECT id, vector FROM segments WHERE generation = ? ORDER BY id", (state.generation,)
            )
        else:
            dim = self.embed_dim()
            cursor = self._connection().execute(
                f"SELECT id, vector FROM segments WHERE {self._live()} ORDER BY id"
            )
        while True:
            rows = cursor.fetchmany(chunk_size)
            if not rows:
                return
            ids = np.fromiter((int(row["id"]) for row in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(bytes(row["vector"]) for row in rows)
            vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(rows), -1)  # [n, D]
            if dim is not None and vectors.shape[1] != dim:
                raise CatalogError(
                    f"catalog {self.path} stores {vectors.shape[1]}-wide vectors but its model "
                    f"has D = {dim}; rebuild the index with `indexer ingest --rebuild`"
                )
            yield ids, vectors

    def snapshot_vector_count(self, snapshot_id: str) -> int | None:
        """Return the vector count recorded when a snapshot was published, or None."""
        row = self._connection().execute(
            "SELECT vector_count FROM snapshots WHERE id = ?", (snapshot_id,)
        ).fetchone()
        return None if row is None else int(row["vector_count"])

    def list_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """Return the latest run records, newest first."""
        rows = self._connection().execute(
            "SELECT id, started_at, finished_at, status, record FROM runs ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {
                "id": int(row["id"]),
                "started_at": row["started_at"],
                "finished_at": row["finished_at"],
                "status": row["status"],
                **json.loads(row["record"]),
            }
            for row in rows
        ]

    def integrity_check(self) -> list[str]:
        """Run SQLite's integrity check and return its messages (``["ok"]`` when sound)."""
        rows = self._connection().execute("PRAGMA integrity_check").fetchall()
        return [str(row[0]) for row in rows]

    def _video_from_row(self, row: sqlite3.Row, with_duplicates: bool = True) -> VideoRecord:
        duplicate_paths: tuple[str, ...] = ()
        if with_duplicates and row["status"] == STATUS_INDEXED:
            duplicates = self._connection().execute(
                "SELECT path FROM videos WHERE duplicate_of = ? AND status = ? ORDER BY path",
                (int(row["id"]), STATUS_DUPLICATE),
            ).fetchall()
            duplicate_paths = tuple(str(d["path"]) for d in duplicates)
        return VideoRecord(
            id=int(row["id"]),
            path=str(row["path"]),
            size=int(row["size"]),
            mtime_ns=int(row["mtime_ns"]),
            content_hash=row["content_hash"],
            probe=ProbeFields(
                duration=row["duration"],
                fps=row["fps"],
                frame_count=row["frame_count"],
                width=row["width"],
                height=row["height"],
                codec=row["codec"],
                rotation=row["rotation"],
            ),
            status=str(row["status"]),
            duplicate_of=row["duplicate_of"],
            failure_kind=row["failure_kind"],
            failure_reason=row["failure_reason"],
            updated_at=str(row["updated_at"]),
            duplicate_paths=duplicate_paths,
            generation=int(row["generation"]),
        )

    # Write side

    def set_meta(self, key: str, value: str) -> None:
        """Store one meta value (autocommitted unless inside transaction())."""
        self._require_writable().execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def set_model(self, fingerprint: str, config: dict[str, Any], embed_dim: int) -> None:
        """Record the model the index is built with."""
        with self.transaction():
            self.set_meta("model_fingerprint", fingerprint)
            self.set_meta("model_config", json.dumps(config, sort_keys=True))
            self.set_meta("embed_dim", str(int(embed_dim)))

    def start_rebuild(self, fingerprint: str, config: dict[str, Any], embed_dim: int) -> int:
        """Start an in-place rebuild with another model and return its generation.

        The live rows stay untouched. An unfinished earlier rebuild is discarded: its segments
        are deleted, because no snapshot contains them, and its video rows are returned to the
        live generation (``_discard_rebuild_rows``), so this rebuild encodes them again.
        """
        with self.transaction() as connection:
            earlier = self.get_meta("rebuild_generation")
            if earlier is not None:
                self._discard_rebuild_rows(int(earlier))
                logger.warning(
                    "discarded the unfinished rebuild of %s to model %s",
                    self.path, self.get_meta("rebuild_fingerprint"),
                )
            row = connection.execute(
                "SELECT MAX(generation) AS g FROM (SELECT generation FROM videos "
                "UNION ALL SELECT generation FROM segments)"
            ).fetchone()
            generation = max(self.live_generation(), int(row["g"] or 0), int(earlier or 0)) + 1
            self.set_meta("rebuild_generation", str(generation))
            self.set_meta("rebuild_fingerprint", fingerprint)
            self.set_meta("rebuild_model_config", json.dumps(config, sort_keys=True))
            self.set_meta("rebuild_embed_dim", str(int(embed_dim)))
        return generation

    def _discard_rebuild_rows(self, generation: int) -> None:
        """Delete an unfinished rebuild's segments and return its video rows to the live generation.

        A row that still has live segments was indexed before the rebuild rewrote it, so it
        becomes an indexed live row again. An indexed row without live segments is new to the
        rebuild and is deleted, with the duplicates that point at it. The remaining rows
        (failed, duplicate or removed) need no segments and are returned as they are. Call it
        inside transaction().
        """
        connection = self._require_writable()
        live = self.live_generation()
        connection.execute("DELETE FROM segments WHERE generation = ?", (generation,))
        connection.execute(
            "UPDATE videos SET generation = ?, status = ?, duplicate_of = NULL, failure_kind = NULL, "
            "failure_reason = NULL WHERE generation = ? AND EXISTS (SELECT 1 FROM segments s "
            "WHERE s.video_id = videos.id AND s.generation = ?)",
            (live, STATUS_INDEXED, generation, live),
        )
        orphans = "SELECT id FROM videos WHERE generation = ? AND status = ?"
        connection.execute(
            f"DELETE FROM videos WHERE generation = ? AND status = ? AND duplicate_of IN ({orphans})",
            (generation, STATUS_DUPLICATE, generation, STATUS_INDEXED),
        )
        connection.execute(
            f"UPDATE videos SET duplicate_of = NULL WHERE duplicate_of IN ({orphans})",
            (generation, STATUS_INDEXED),
        )
        connection.execute(
            "DELETE FROM videos WHERE generation = ? AND status = ?", (generation, STATUS_INDEXED)
        )
        connection.execute("UPDATE videos SET generation = ? WHERE generation = ?", (live, generation))

    def finish_rebuild(self, snapshot_id: str, vector_count: int, index_type: str) -> int:
        """Make the rebuild's generation live and record its snapshot, in one commit.

        The rows of older generations are retired, not deleted. The old model's segments and
        the videos the rebuild did not find again stay for a running service that still serves
        the old snapshot. ``delete_retired_rows`` deletes them when the next writer opens the
        catalog. Returns the number of retired video rows. The caller publishes the
        snapshot (points ``CURRENT`` at it) after this commit.
        """
        state = self.rebuild_state()
        if state is None:
            raise CatalogError(f"catalog {self.path} has no unfinished rebuild to finish")
        generation = state.generation
        with self.transaction() as connection:
            # A retired duplicate row stays out of the paths listed with the new rows.
            connection.execute(
                "UPDATE videos SET duplicate_of = NULL WHERE generation != ? OR duplicate_of IN "
                "(SELECT id FROM videos WHERE generation != ?)",
                (generation, generation),
            )
            retired = connection.execute(
                "SELECT COUNT(*) AS n FROM videos WHERE generation < ?", (generation,)
            ).fetchone()
            self.set_meta("model_fingerprint", state.fingerprint)
            self.set_meta("model_config", json.dumps(state.model_config, sort_keys=True))
            self.set_meta("embed_dim", str(state.embed_dim))
            self.set_meta("generation", str(generation))
            connection.executemany("DELETE FROM meta WHERE key = ?", [(key,) for key in _REBUILD_KEYS])
            self.record_snapshot(snapshot_id, vector_count, index_type)
        return int(retired["n"])

    def delete_retired_rows(self) -> tuple[int, int]:
        """Delete the rows that a finished rebuild retired and return (videos, segments) deleted.

        Retired rows belong to generations older than the live one. The writable constructor
        calls this, so every writer run (ingest, remove, rebuild) starts without them.
        NOTE: a writer that starts within seconds of a finished rebuild can delete them before
        a running service has loaded the new snapshot, and that service then returns no hits
        until it reloads.
        """
        connection = self._require_writable()
        if not self._has_generations():
            return 0, 0
        live = self.live_generation()
        with self.transaction():
            connection.execute(
                "UPDATE videos SET duplicate_of = NULL WHERE duplicate_of IN "
                "(SELECT id FROM videos WHERE generation < ?)",
                (live,),
            )
            segments = connection.execute("DELETE FROM segments WHERE generation < ?", (live,)).rowcount
            videos = connection.execute("DELETE FROM videos WHERE generation < ?", (live,)).rowcount
        if videos or segments:
            logger.info(
                "deleted the rows an earlier rebuild of %s retired: %d videos, %d segments",
                self.path, videos, segments,
            )
        return int(videos), int(segments)

    def write_indexed(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        probe: ProbeFields,
        segments: Sequence[SegmentToWrite],
    ) -> int:
        """Store a video and its segments, replacing what the path held before.

        Call inside transaction(), so that the old segments disappear in the same commit that
        adds the new ones. During a rebuild, segments of older generations stay until
        ``delete_retired_rows`` runs after the rebuild finished. Returns the video id.
        """
        connection = self._require_writable()
        dim = self._write_embed_dim()
        generation = self.write_generation()
        video_id = self._detach_path(path)
        values = (
            size, mtime_ns, content_hash, probe.duration, probe.fps, probe.frame_count,
            probe.width, probe.height, probe.codec, probe.rotation, STATUS_INDEXED, utc_now(),
            generation,
        )
        if video_id is None:
            cursor = connection.execute(
                "INSERT INTO videos(size, mtime_ns, content_hash, duration, fps, frame_count, "
                "width, height, codec, rotation, status, updated_at, generation, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, path),
            )
            video_id = int(cursor.lastrowid)
        else:
            connection.execute(
                "UPDATE videos SET size = ?, mtime_ns = ?, content_hash = ?, duration = ?, "
                "fps = ?, frame_count = ?, width = ?, height = ?, codec = ?, rotation = ?, "
                "status = ?, updated_at = ?, generation = ?, duplicate_of = NULL, "
                "failure_kind = NULL, failure_reason = NULL WHERE id = ?",
                (*values, video_id),
            )
        rows = []
        for segment in segments:
            vector = np.ascontiguousarray(segment.vector, dtype=np.float32).reshape(-1)  # [D]
            if dim is not None and vector.shape[0] != dim:
                raise CatalogError(
                    f"segment vector of {path} has width {vector.shape[0]}, the index expects "
                    f"D = {dim}"
                )
            rows.append(
                (video_id, segment.segment_index, segment.start_s, segment.end_s,
                 vector.tobytes(), generation)
            )
        connection.executemany(
            "INSERT INTO segments(video_id, segment_index, start_s, end_s, vector, generation) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        return video_id

    def write_failed(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        failure_kind: str,
        failure_reason: str,
        probe: ProbeFields | None = None,
    ) -> int:
        """Record a file that could not be indexed, dropping any segments it had."""
        return self._write_without_segments(
            path, size, mtime_ns, content_hash, STATUS_FAILED, None,
            failure_kind, _one_line(failure_reason), probe,
        )

    def write_duplicate(
        self, path: str, size: int, mtime_ns: int, content_hash: str, duplicate_of: int
    ) -> int:
        """Record a file whose content is already indexed under another path."""
        return self._write_without_segments(
            path, size, mtime_ns, content_hash, STATUS_DUPLICATE, duplicate_of, None, None, None
        )

    def update_file_stat(self, path: str, size: int, mtime_ns: int) -> None:
        """Store a new size and mtime for a path whose content hash did not change."""
        self._require_writable().execute(
            "UPDATE videos SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ?",
            (size, mtime_ns, utc_now(), path),
        )

    def mark_removed(self, path: str) -> bool:
        """Drop a video's segments and mark it removed; return False when the path is unknown.

        When other paths hold the same content, the first of them takes over the segments, so
        the content stays searchable under a name that still exists. Otherwise the segments of
        every generation go, so an unfinished rebuild does not bring the video back.
        """
        connection = self._require_writable()
        row = connection.execute(
            "SELECT id, status FROM videos WHERE path = ?", (path,)
        ).fetchone()
        if row is None or row["status"] == STATUS_REMOVED:
            return False
        video_id = self._detach_path(path)
        connection.execute("DELETE FROM segments WHERE video_id = ?", (video_id,))
        connection.execute(
            "UPDATE videos SET status = ?, duplicate_of = NULL, updated_at = ? WHERE path = ?",
            (STATUS_REMOVED, utc_now(), path),
        )
        return True

    def _write_without_segments(
        self,
        path: str,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        status: str,
        duplicate_of: int | None,
        failure_kind: str | None,
        failure_reason: str | None,
        probe: ProbeFields | None,
    ) -> int:
        connection = self._require_writable()
        probe = probe or ProbeFields()
        video_id = self._detach_path(path)
        values = (
            size, mtime_ns, content_hash, probe.duration, probe.fps, probe.frame_count,
            probe.width, probe.height, probe.codec, probe.rotation, status, duplicate_of,
            failure_kind, failure_reason, utc_now(), self.write_generation(),
        )
        columns = (
            "size, mtime_ns, content_hash, duration, fps, frame_count, width, height, codec, "
            "rotation, status, duplicate_of, failure_kind, failure_reason, updated_at, generation"
        )
        if video_id is None:
            cursor = connection.execute(
                f"INSERT INTO videos({columns}, path) VALUES ({','.join('?' * 17)})",
                (*values, path),
            )
            return int(cursor.lastrowid)
        assignments = ", ".join(f"{name.strip()} = ?" for name in columns.split(","))
        connection.execute(f"UPDATE videos SET {assignments} WHERE id = ?", (*values, video_id))
        return video_id

    def _detach_path(self, path: str) -> int | None:
        """Free a path's row for new content and return its id (None when the path is new).

        The path's old segments are deleted, unless a duplicate of its content exists under
        another path: then that duplicate's row takes over the old content and segments.
        During a rebuild, a row of an older generation keeps its segments, because the
        served snapshot still contains them. ``delete_retired_rows`` deletes them after the
        rebuild finished.
        """
        connection = self._require_writable()
        generation = self.write_generation()
        row = connection.execute(
            f"SELECT {_VIDEO_COLUMNS} FROM videos WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        video_id = int(row["id"])
        if row["status"] != STATUS_INDEXED or int(row["generation"]) != generation:
            return video_id
        heir = connection.execute(
            "SELECT id, path, size, mtime_ns FROM videos WHERE duplicate_of = ? AND status = ? "
            "ORDER BY path LIMIT 1",
            (video_id, STATUS_DUPLICATE),
        ).fetchone()
        if heir is None:
            connection.execute(
                "DELETE FROM segments WHERE video_id = ? AND generation = ?", (video_id, generation)
            )
            return video_id

        # Swap paths so that the heir's row becomes the indexed one, keeping the segments on
        # the old row id; the heir's former row (now under `path`) is returned for reuse.
        heir_id = int(heir["id"])
        connection.execute("UPDATE videos SET path = ? WHERE id = ?", (f"//moving/{path}", video_id))
        connection.execute("UPDATE videos SET path = ? WHERE id = ?", (path, heir_id))
        connection.execute(
            "UPDATE videos SET path = ?, size = ?, mtime_ns = ?, updated_at = ? WHERE id = ?",
            (heir["path"], heir["size"], heir["mtime_ns"], utc_now(), video_id),
        )
        connection.execute(
            "UPDATE videos SET duplicate_of = NULL, status = ? WHERE id = ?",
            (STATUS_REMOVED, heir_id),
        )
        logger.info("content of %s is now listed under its duplicate %s", path, heir["path"])
        return heir_id

    def record_snapshot(self, snapshot_id: str, vector_count: int, index_type: str) -> None:
        """Record a snapshot's vector count before it is published."""
        self._require_writable().execute(
            "INSERT INTO snapshots(id, vector_count, index_type, created_at) VALUES (?, ?, ?, ?)",
            (snapshot_id, int(vector_count), index_type, utc_now()),
        )

    def forget_snapshots(self, snapshot_ids: Iterable[str]) -> None:
        """Delete the records of garbage-collected snapshots."""
        self._require_writable().executemany(
            "DELETE FROM snapshots WHERE id = ?", [(s,) for s in snapshot_ids]
        )

    def start_run(self, record: dict[str, Any]) -> int:
        """Insert a run record with status ``running`` and return its id."""
        cursor = self._require_writable().execute(
            "INSERT INTO runs(started_at, status, record) VALUES (?, 'running', ?)",
            (utc_now(), json.dumps(record, sort_keys=True)),
        )
        return int(cursor.lastrowid)

    def finish_run(self, run_id: int, status: str, record: dict[str, Any]) -> None:
        """Store a run's final status and record (counts, stage timings, index type, recall)."""
        self._require_writable().execute(
            "UPDATE runs SET finished_at = ?, status = ?, record = ? WHERE id = ?",
            (utc_now(), status, json.dumps(record, sort_keys=True), run_id),
        )


def _segment_from_row(row: sqlite3.Row) -> SegmentRecord:
    return SegmentRecord(
        vector_id=int(row["id"]),
        video_id=int(row["video_id"]),
        segment_index=int(row["segment_index"]),
        start_s=float(row["start_s"]),
        end_s=float(row["end_s"]),
        path=str(row["path"]),
    )


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
