"""The index store: SQLite catalog plus immutable FAISS snapshots behind an atomic pointer."""

from shared.index_store.catalog import (
    STATUS_DUPLICATE,
    STATUS_FAILED,
    STATUS_INDEXED,
    STATUS_REMOVED,
    Catalog,
    ProbeFields,
    SegmentRecord,
    SegmentToWrite,
    VideoRecord,
)
from shared.index_store.errors import (
    CatalogError,
    IndexLockedError,
    IndexStoreError,
    ModelMismatchError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
)
from shared.index_store.index_build import IndexPolicy, build_index, choose_index_type
from shared.index_store.lock import WriterLock
from shared.index_store.snapshot import (
    CATALOG_FILE,
    CURRENT_FILE,
    MODEL_DIR,
    SNAPSHOTS_DIR,
    Snapshot,
    SnapshotManifest,
    collect_garbage,
    list_snapshot_ids,
    load_snapshot,
    publish_snapshot,
    read_current_snapshot_id,
)

__all__ = [
    "CATALOG_FILE",
    "CURRENT_FILE",
    "MODEL_DIR",
    "SNAPSHOTS_DIR",
    "STATUS_DUPLICATE",
    "STATUS_FAILED",
    "STATUS_INDEXED",
    "STATUS_REMOVED",
    "Catalog",
    "CatalogError",
    "IndexLockedError",
    "IndexPolicy",
    "IndexStoreError",
    "ModelMismatchError",
    "ProbeFields",
    "SegmentRecord",
    "SegmentToWrite",
    "Snapshot",
    "SnapshotCorruptError",
    "SnapshotManifest",
    "SnapshotNotFoundError",
    "VideoRecord",
    "WriterLock",
    "build_index",
    "choose_index_type",
    "collect_garbage",
    "list_snapshot_ids",
    "load_snapshot",
    "publish_snapshot",
    "read_current_snapshot_id",
]
