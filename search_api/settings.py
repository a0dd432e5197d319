"""Settings of the search service, read from ``PIG_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_torch_threads() -> int:
    # Text encoding of a micro-batch gains little past a few threads, and the rest of the
    # cores stay free for FAISS and the event loop.
    return max(1, min(4, os.cpu_count() or 1))


class ApiSettings(BaseSettings):
    """Configuration of one search service process.

    Every field can be set through an environment variable named ``PIG_`` plus the field
    name in upper case, for example ``PIG_INDEX_DIR`` or ``PIG_API_KEY``. List fields such
    as ``PIG_CORS_ORIGINS`` take a JSON array.
    """

    model_config = SettingsConfigDict(env_prefix="PIG_", extra="ignore")

    # Index directory written by `indexer ingest` (catalog.sqlite, snapshots/, CURRENT, model/).
    index_dir: Path
    # Checkpoint directory of the text model; None loads the copy the indexer stored in
    # INDEX_DIR/model, which guarantees the same model fingerprint as the vectors.
    checkpoint: Path | None = None
    # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    # torch intra-op threads of the single encoding worker thread.
    torch_threads: int = Field(default_factory=_default_torch_threads, ge=1, le=256)
    # Maximum number of queries encoded (and searched) in one forward pass.
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    # Maximum time in milliseconds a query waits for others to join its batch.
    batch_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    # Number of query embeddings kept in the LRU cache; 0 disables the cache.
    cache_size: int = Field(default=1024, ge=0)
    # Seconds between two reads of the CURRENT snapshot pointer.
    reload_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    # Bearer token required on every route except /healthz and /readyz; None disables it.
    api_key: SecretStr | None = None
    # Origins allowed by CORS, for example ["https://search.example.com"]; empty disables CORS.
    cors_origins: list[str] = Field(default_factory=list)
    # Maximum request body size in bytes; larger bodies get 413.
    max_body_bytes: int = Field(default=64 * 1024, ge=256)
    # Maximum query length in characters after stripping whitespace.
    max_query_chars: int = Field(default=4096, ge=1)
    # Maximum top_k of one search request.
    max_top_k: int = Field(default=100, ge=1, le=10_000)
    # Maximum offset of one search request (deep paging costs a larger FAISS search).
    max_offset: int = Field(default=1000, ge=0, le=100_000)
    # Per-call FAISS search parameters: nprobe for IVF-PQ snapshots, efSearch for HNSW
    # snapshots; None keeps the value the indexer built the snapshot with.
    faiss_nprobe: int | None = Field(default=None, ge=1)
    faiss_ef_search: int | None = Field(default=None, ge=1)
    # Side in pixels of the square JPEG thumbnails.
    thumbnail_size: int = Field(default=256, ge=16, le=2048)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Base URL written into thumbnail_url and file_url; None uses the URL the request came to.
    public_base_url: AnyHttpUrl | None = None
    log_level: str = "info"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device {value!r} is invalid; use 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(
                f"log_level {value!r} is invalid; use critical, error, warning, info or debug"
            )
        return value

    @model_validator(mode="after")
    def _check_paths(self) -> "ApiSettings":
        index_dir = self.index_dir.expanduser().resolve()
        create_hint = f"create it with `indexer ingest VIDEOS_DIR --index-dir {index_dir}`"
        if not index_dir.is_dir():
            raise ValueError(f"index directory {index_dir} does not exist; {create_hint}")
        catalog = index_dir / "catalog.sqlite"
        if not catalog.is_file():
            raise ValueError(
                f"index directory {index_dir} has no catalog.sqlite, so it is not an index; "
                f"{create_hint}"
            )
        self.index_dir = index_dir

        checkpoint = self.model_dir
        if not (checkpoint / "config.json").is_file():
            if self.checkpoint is None:
                raise ValueError(
                    f"index directory {index_dir} has no model copy in {checkpoint}; re-run "
                    f"`indexer ingest` on it, or set PIG_CHECKPOINT (--checkpoint) to the "
                    f"checkpoint directory the index was built with"
                )
            raise ValueError(
                f"checkpoint {checkpoint} is not a checkpoint directory (config.json is "
                f"missing); set PIG_CHECKPOINT (--checkpoint) to a directory written by "
                f"save_checkpoint"
            )
        return self

    @property
    def model_dir(self) -> Path:
        """Checkpoint directory the service loads its text model from."""
        if self.checkpoint is not None:
            return self.checkpoint.expanduser().resolve()
        return self.index_dir / "model"
