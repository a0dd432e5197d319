"""Exceptions raised by the model library."""

from __future__ import annotations


class ModelError(Exception):
    """Base class for model loading and configuration errors."""


class UnknownModelError(ModelError, ValueError):
    """Raised for an open_clip architecture name that is not registered."""


class BackboneUnavailableError(ModelError):
    """Raised when the backbone weights cannot be loaded (offline, missing file, unknown tag)."""


class UnsupportedBackboneError(ModelError):
    """Raised for an open_clip architecture this product cannot use (no ViT image tower)."""


class QueryDependentHeadError(ModelError):
    """Raised when a query-independent video vector is requested from the `xpool` head."""


class CheckpointError(ModelError):
    """Raised when a checkpoint directory is missing, incomplete or inconsistent."""
