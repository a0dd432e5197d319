"""Exceptions raised by the index store."""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base class of every error the index store raises."""


class SnapshotNotFoundError(IndexStoreError):
    """No published snapshot exists in the index directory, or the requested one is missing."""


class SnapshotCorruptError(IndexStoreError):
    """A snapshot's files do not match its manifest (torn, truncated or altered)."""


class CatalogError(IndexStoreError):
    """The catalog is missing, read-only where a write was requested, or inconsistent."""


class ModelMismatchError(IndexStoreError):
    """The index was built with a different model than the one offered."""

    def __init__(self, index_fingerprint: str, model_fingerprint: str, index_dir: str) -> None:
        self.index_fingerprint = index_fingerprint
        self.model_fingerprint = model_fingerprint
        super().__init__(
            f"the index in {index_dir} was built with model fingerprint {index_fingerprint}, "
            f"but the loaded model has fingerprint {model_fingerprint}; use a new index "
            f"directory (--index-dir) or re-index everything with this model (--rebuild)"
        )


class RebuildInProgressError(IndexStoreError):
    """An in-place rebuild to another model is unfinished, and a plain ingest was requested."""

    def __init__(
        self, index_fingerprint: str | None, rebuild_fingerprint: str, model_fingerprint: str, index_dir: str
    ) -> None:
        self.index_fingerprint = index_fingerprint
        self.rebuild_fingerprint = rebuild_fingerprint
        self.model_fingerprint = model_fingerprint
        if model_fingerprint == rebuild_fingerprint:
            message = (
                f"the index in {index_dir} is being rebuilt from model {index_fingerprint} to "
                f"this model {model_fingerprint}, and the rebuild is unfinished; re-run the "
                f"ingest with --rebuild to resume it"
            )
        else:
            message = (
                f"a rebuild of the index in {index_dir} from model {index_fingerprint} to model "
                f"{rebuild_fingerprint} is in progress, so vectors of the loaded model "
                f"{model_fingerprint} cannot be added; finish the rebuild with --rebuild and "
                f"model {rebuild_fingerprint}, or start another rebuild with --rebuild and this "
                f"model"
            )
        super().__init__(message)


class IndexLockedError(IndexStoreError):
    """Another writer holds the index directory's lock file."""
