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
    """An in-place rebuild to another model is unfinished, and a plain ingest was requested.

    ``staged_model`` is the rebuild's model copy (``INDEX_DIR/model.rebuild``) when it exists,
    and the message then names the exact options that resume the rebuild with it.
    """

    def __init__(
        self,
        index_fingerprint: str | None,
        rebuild_fingerprint: str,
        model_fingerprint: str,
        index_dir: str,
        staged_model: str | None = None,
    ) -> None:
        self.index_fingerprint = index_fingerprint
        self.rebuild_fingerprint = rebuild_fingerprint
        self.model_fingerprint = model_fingerprint
        self.staged_model = staged_model
        if staged_model is not None:
            resume = f"resume it with `--rebuild --checkpoint {staged_model}`"
        elif model_fingerprint == rebuild_fingerprint:
            resume = "resume it by running the ingest again with --rebuild"
        else:
            resume = (
                f"resume it with --rebuild and a checkpoint of model {rebuild_fingerprint} "
                f"(--checkpoint)"
            )
        if model_fingerprint == rebuild_fingerprint:
            message = (
                f"the index in {index_dir} is being rebuilt from model {index_fingerprint} to "
                f"this model {model_fingerprint}, and the rebuild is unfinished; {resume}"
            )
        else:
            message = (
                f"a rebuild of the index in {index_dir} from model {index_fingerprint} to model "
                f"{rebuild_fingerprint} is unfinished, so vectors of the loaded model "
                f"{model_fingerprint} cannot be added; {resume}. A model built by name with "
                f"random weights (--model) gets new random weights and a new fingerprint on each "
                f"run, so repeating such a command starts another rebuild instead. To discard "
                f"the unfinished rebuild, start another one with --rebuild and this model"
            )
        super().__init__(message)


class IndexLockedError(IndexStoreError):
    """Another writer holds the index directory's lock file."""
