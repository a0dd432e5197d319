"""Immutable FAISS snapshots and the ``CURRENT`` pointer of an index directory.

Layout::

    INDEX_DIR/snapshots/<id>/index.faiss    the FAISS index, never modified after publication
    INDEX_DIR/snapshots/<id>/manifest.json  id, vector count, size and sha256 of index.faiss, ...
    INDEX_DIR/CURRENT                       the id of the snapshot readers should load

A snapshot is written under a temporary directory name, fsynced, renamed into place and
recorded in the catalog; only then is ``CURRENT`` replaced, by writing ``CURRENT.tmp``, fsyncing
it and ``os.replace``-ing it over ``CURRENT``. A reader therefore sees either the old or the new
pointer, and the pointer always names a complete snapshot. Snapshot ids sort by creation time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shared.index_store.catalog import Catalog
from shared.index_store.errors import SnapshotCorruptError, SnapshotNotFoundError
from shared.index_store.index_build import BuiltIndex, IndexPolicy, build_index

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
SNAPSHOTS_DIR = "snapshots"
CURRENT_FILE = "CURRENT"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
MODEL_DIR = "model"
# The model copy of an unfinished in-place rebuild. It replaces MODEL_DIR just before the
# rebuild's snapshot becomes CURRENT, so MODEL_DIR stays the model of the CURRENT snapshot.
REBUILD_MODEL_DIR = "model.rebuild"
MIN_KEEP = 2


@dataclass(frozen=True)
class SnapshotManifest:
    """The contents of a snapshot's manifest.json."""

    snapshot_id: str  # directory name under snapshots/
    vector_count: int  # ntotal of the index, equal to the catalog's segment count at publication
    index_file: str  # file name of the FAISS index inside the snapshot directory
    index_size: int  # bytes of the index file
    sha256: str  # hex sha256 of the index file
    model_fingerprint: str | None  # fingerprint of the model that produced the vectors
    index_type: str  # flat, hnsw or ivfpq
    embed_dim: int  # vector width D
    created_at: str  # ISO 8601 UTC
    recall_at_10: float | None = None  # approximate indexes: recall@10 against exact search
    index_params: dict[str, Any] | None = None  # build parameters of an approximate index

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotManifest:
        """Build a manifest from its JSON object, ignoring unknown keys."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


class Snapshot:
    """A loaded, read-only FAISS snapshot; ``search`` may be called from several threads."""

    def __init__(self, manifest: SnapshotManifest, index: faiss.Index, path: Path) -> None:
        self.manifest = manifest
        self.index = index
        self.path = path

    @property
    def snapshot_id(self) -> str:
        """The snapshot's id."""
        return self.manifest.snapshot_id

    @property
    def model_fingerprint(self) -> str | None:
        """Fingerprint of the model whose vectors the snapshot holds."""
        return self.manifest.model_fingerprint

    @property
    def vector_count(self) -> int:
        """Number of vectors in the index."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector width D."""
        return int(self.index.d)

    def search(
        self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search ``queries`` [Q, D] and return (scores [Q, k] float32, vector_ids [Q, k] int64).

        ``params`` are per-call FAISS search parameters (``faiss.SearchParametersHNSW(efSearch=..)``
        or ``faiss.SearchParametersIVF(nprobe=..)``); the shared index is never modified. When
        fewer than ``k`` vectors exist, the remaining ids are -1 and their scores -inf.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)  # [1, D]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape [Q, {self.dim}], got {list(queries.shape)}; encode them "
                f"with the model the index was built with"
            )
        if self.index.ntotal == 0 or queries.shape[0] == 0:
            scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
            return scores, np.full((queries.shape[0], k), -1, dtype=np.int64)
        scores, ids = self.index.search(queries, k, params=params)
        # FAISS pads missing results with -1 ids and the lowest float; report -inf instead.
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)


# Reading


def read_current_snapshot_id(index_dir: str | Path) -> str | None:
    """Return the id in ``INDEX_DIR/CURRENT``, or None when nothing is published yet."""
    try:
        text = (Path(index_dir) / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def list_snapshot_ids(index_dir: str | Path) -> list[str]:
    """Return the ids of the complete snapshot directories, oldest first."""
    root = Path(index_dir) / SNAPSHOTS_DIR
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST_FILE).is_file()
    )


def load_snapshot(
    index_dir: str | Path, snapshot_id: str | None = None, *, fallback: bool | None = None
) -> Snapshot:
    """Load and verify a snapshot: file size, sha256, and vector count against the catalog.

    With ``snapshot_id=None`` the snapshot named by ``CURRENT`` is loaded; if it is corrupt, a
    warning is logged and the newest older snapshot that verifies is returned instead
    (``fallback`` defaults to True in that case and to False for an explicit id).

    Raises ``SnapshotNotFoundError`` when nothing is published, and ``SnapshotCorruptError``
    when the snapshot (and, with fallback, every older one) fails verification.
    """
    index_dir = Path(index_dir)
    if fallback is None:
        fallback = snapshot_id is None
    if snapshot_id is None:
        snapshot_id = read_current_snapshot_id(index_dir)
        if snapshot_id is None:
            raise SnapshotNotFoundError(
                f"no snapshot published in {index_dir} ({CURRENT_FILE} is missing); run "
                f"`indexer ingest` first"
            )
    try:
        return _load_verified(index_dir, snapshot_id)
    except SnapshotCorruptError as error:
        if not fallback:
            raise
        logger.warning("snapshot %s is corrupt (%s); looking for an older good one", snapshot_id, error)
        for older_id in reversed(list_snapshot_ids(index_dir)):
            if older_id >= snapshot_id:
                continue
            try:
                snapshot = _load_verified(index_dir, older_id)
            except SnapshotCorruptError as older_error:
                logger.warning("snapshot %s is corrupt too (%s)", older_id, older_error)
                continue
            logger.warning("serving the previous snapshot %s instead of %s", older_id, snapshot_id)
            return snapshot
        raise


def read_manifest(index_dir: str | Path, snapshot_id: str) -> SnapshotManifest:
    """Return a snapshot's manifest without loading or verifying its index file.

    Raises ``SnapshotNotFoundError`` when the snapshot is missing and ``SnapshotCorruptError``
    when its manifest is unreadable.
    """
    return _read_manifest(Path(index_dir) / SNAPSHOTS_DIR / snapshot_id, snapshot_id)


def _read_manifest(directory: Path, snapshot_id: str) -> SnapshotManifest:
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        return SnapshotManifest.from_json(data)
    except FileNotFoundError as error:
        raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found in {directory.parent}") from error
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
        raise SnapshotCorruptError(f"manifest of snapshot {snapshot_id} is unreadable: {error}") from error


def _load_verified(index_dir: Path, snapshot_id: str) -> Snapshot:
    directory = index_dir / SNAPSHOTS_DIR / snapshot_id
    manifest = _read_manifest(directory, snapshot_id)
    index_path = directory / manifest.index_file
    try:
        data = index_path.read_bytes()
    except FileNotFoundError as error:
        raise SnapshotCorruptError(f"snapshot {snapshot_id}: {index_path} is missing") from error
    if len(data) != manifest.index_size:
        raise SnapshotCorruptError(
            f"snapshot {snapshot_id}: {index_path} has {len(data)} bytes, the manifest records "
            f"{manifest.index_size} (truncated or torn file)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise SnapshotCorruptError(
            f"snapshot {snapshot_id}: sha256 of {index_path} is {digest}, the manifest records "
            f"{manifest.sha256}"
        )
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as error:
        raise SnapshotCorruptError(f"snapshot {snapshot_id}: FAISS cannot read {index_path}: {error}") from error
    if index.ntotal != manifest.vector_count:
        raise SnapshotCorruptError(
            f"snapshot {snapshot_id}: index contains {index.ntotal} vectors, the manifest records "
            f"{manifest.vector_count}"
        )

    catalog_path = index_dir / CATALOG_FILE
    if catalog_path.is_file():
        with Catalog(catalog_path, read_only=True) as catalog:
            recorded = catalog.snapshot_vector_count(snapshot_id)
        if recorded is None:
            raise SnapshotCorruptError(
                f"snapshot {snapshot_id} is not recorded in the catalog {catalog_path}; it was "
                f"never fully published or belongs to another catalog"
            )
        if recorded != index.ntotal:
            raise SnapshotCorruptError(
                f"snapshot {snapshot_id}: index contains {index.ntotal} vectors, the catalog "
                f"recorded {recorded} at publication"
            )
    return Snapshot(manifest, index, directory)


# Writing


def new_snapshot_id() -> str:
    """Return a new snapshot id that sorts after every earlier one from this clock."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def publish_snapshot(
    index_dir: str | Path,
    catalog: Catalog,
    policy: IndexPolicy | None = None,
    keep: int = 3,
) -> SnapshotManifest:
    """Build a snapshot of every live vector in ``catalog``, publish it and collect old snapshots.

    The caller must hold the writer lock. ``keep`` (at least 2) snapshots stay on disk so that
    the loader has a previous good one to fall back to.
    """
    started = time.perf_counter()
    manifest = write_snapshot(index_dir, catalog, policy)
    catalog.record_snapshot(manifest.snapshot_id, manifest.vector_count, manifest.index_type)
    point_current(index_dir, manifest.snapshot_id)
    logger.info(
        "published snapshot %s: %d vectors, %s index, %.2f s",
        manifest.snapshot_id, manifest.vector_count, manifest.index_type,
        time.perf_counter() - started,
    )
    collect_garbage(index_dir, catalog, keep=keep)
    return manifest


def write_snapshot(
    index_dir: str | Path,
    catalog: Catalog,
    policy: IndexPolicy | None = None,
    rebuild: bool = False,
) -> SnapshotManifest:
    """Build a snapshot of the live vectors and move its folder into place, unpublished.

    With ``rebuild`` the snapshot contains the vectors of the catalog's unfinished rebuild
    and records the rebuild's model. The snapshot is neither recorded in the catalog nor
    named by ``CURRENT``; ``publish_snapshot`` and the rebuild's finish do both.
    """
    index_dir = Path(index_dir)
    policy = policy or IndexPolicy()
    if rebuild:
        state = catalog.rebuild_state()
        if state is None:
            raise ValueError(f"catalog {catalog.path} has no unfinished rebuild to build a snapshot of")
        dim: int | None = state.embed_dim
        fingerprint: str | None = state.fingerprint
    else:
        dim = catalog.embed_dim()
        fingerprint = catalog.model_fingerprint()
    if dim is None:
        raise ValueError(f"catalog {catalog.path} has no model recorded; cannot build a snapshot")

    id_chunks, vector_chunks = [], []
    for ids, vectors in catalog.iter_vectors(rebuild=rebuild):
        id_chunks.append(ids)
        vector_chunks.append(vectors)
    ids = np.concatenate(id_chunks) if id_chunks else np.zeros(0, dtype=np.int64)
    vectors = np.concatenate(vector_chunks) if vector_chunks else np.zeros((0, dim), np.float32)
    built: BuiltIndex = build_index(ids, vectors, dim, policy)
    data = faiss.serialize_index(built.index).tobytes()

    snapshot_id = new_snapshot_id()
    manifest = SnapshotManifest(
        snapshot_id=snapshot_id,
        vector_count=int(built.index.ntotal),
        index_file=INDEX_FILE,
        index_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        model_fingerprint=fingerprint,
        index_type=built.index_type,
        embed_dim=dim,
        created_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        recall_at_10=built.recall_at_10,
        index_params=built.params or None,
    )

    snapshots_root = index_dir / SNAPSHOTS_DIR
    snapshots_root.mkdir(parents=True, exist_ok=True)
    staging = snapshots_root / f".tmp-{snapshot_id}"
    staging.mkdir()
    _write_file_synced(staging / INDEX_FILE, data)
    manifest_json = json.dumps(manifest.__dict__, indent=2, sort_keys=True).encode("utf-8")
    _write_file_synced(staging / MANIFEST_FILE, manifest_json)
    _fsync_path(staging)
    final = snapshots_root / snapshot_id
    os.rename(staging, final)
    _fsync_path(snapshots_root)
    return manifest


def point_current(index_dir: str | Path, snapshot_id: str) -> None:
    """Replace ``CURRENT`` with ``snapshot_id`` atomically; the snapshot must be recorded first."""
    index_dir = Path(index_dir)
    pointer_tmp = index_dir / f"{CURRENT_FILE}.tmp"
    _write_file_synced(pointer_tmp, f"{snapshot_id}\n".encode("ascii"))
    os.replace(pointer_tmp, index_dir / CURRENT_FILE)
    _fsync_path(index_dir)


def collect_garbage(index_dir: str | Path, catalog: Catalog | None = None, keep: int = 3) -> list[str]:
    """Delete snapshots older than the newest ``keep`` (at least 2) and stale staging folders.

    The snapshot ``CURRENT`` names is always kept. Readers hold a loaded snapshot in memory, so
    deleting its files does not affect them; the kept ones serve readers that are loading now
    and the corruption fallback. Returns the deleted ids.
    """
    index_dir = Path(index_dir)
    keep = max(MIN_KEEP, keep)
    current = read_current_snapshot_id(index_dir)
    ids = list_snapshot_ids(index_dir)
    doomed = [s for s in ids[: max(0, len(ids) - keep)] if s != current]
    for snapshot_id in doomed:
        shutil.rmtree(index_dir / SNAPSHOTS_DIR / snapshot_id, ignore_errors=True)
    root = index_dir / SNAPSHOTS_DIR
    # Staging folders are left behind only by a writer killed mid-publication; the caller holds
    # the writer lock, so none of them belongs to a live writer.
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".tmp-"):
                shutil.rmtree(entry, ignore_errors=True)
    if catalog is not None and doomed:
        catalog.forget_snapshots(doomed)
    if doomed:
        logger.info("deleted %d old snapshots: %s", len(doomed), ", ".join(doomed))
    return doomed
