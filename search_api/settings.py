"""Settings of the search service, read from ``PIG_*`` environment variables."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "PIG_"


def _default_torch_threads() -> int:
    # Text encoding of a micro-batch gains little past a few threads, and the rest of the
    # cores stay free for FAISS and the event loop.
    return max(1, min(4, os.cpu_count() or 1))


class ApiSettings(BaseSettings):
    """Configuration of one search service process.

    Every field can be set through an environment variable named ``PIG_`` plus the field
    name in upper case, for example ``PIG_INDEX_DIR`` or ``PIG_API_KEY``. Each field's
    description is also the help text that ``search-api --help`` prints.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    index_dir: Path = Field(
        description="Index directory written by `indexer ingest` (catalog.sqlite, snapshots/, "
        "CURRENT, model/)."
    )
    checkpoint: Path | None = Field(
        default=None,
        description="Checkpoint directory of the text model. Unset loads the copy the indexer "
        "stored in INDEX_DIR/model and follows it when the index is rebuilt with another model.",
    )
    device: str = Field(
        default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N."
    )
    torch_threads: int = Field(
        default_factory=_default_torch_threads,
        ge=1,
        le=256,
        description="torch intra-op threads of the encoding thread; default the CPU count, "
        "at most 4.",
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Maximum queries encoded in one forward pass."
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="Maximum milliseconds a query waits for others to join its batch.",
    )
    cache_size: int = Field(
        default=1024, ge=0, description="Query embeddings kept in the LRU cache; 0 disables it."
    )
    reload_interval_s: float = Field(
        default=5.0,
        gt=0.0,
        le=3600.0,
        description="Seconds between two reads of the CURRENT snapshot pointer.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer token required on every route except /healthz and /readyz; unset "
        "disables authentication. Media links in responses are then signed with a key "
        "derived from it.",
    )
    link_lifetime_s: int = Field(
        default=3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Seconds a signed file or thumbnail link stays valid when PIG_API_KEY is set "
        "(rounded up to the next full minute).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, as a comma-separated list "
        "(https://a.example,https://b.example) or a JSON list; empty disables CORS.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=256, description="Maximum request body in bytes; larger gets 413."
    )
    max_query_chars: int = Field(
        default=4096, ge=1, description="Maximum query length in characters after stripping."
    )
    max_top_k: int = Field(
        default=100, ge=1, le=10_000, description="Maximum top_k of one search request."
    )
    max_offset: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Maximum offset of one search request (deep paging costs a larger search).",
    )
    faiss_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="OpenMP threads of a FAISS search for one query. One is fastest on small "
        "hosts; raise it on hosts with idle cores and large flat indexes.",
    )
    faiss_batch_threads: int = Field(
        default_factory=_default_torch_threads,
        ge=1,
        le=256,
        description="OpenMP threads of a FAISS search for a micro-batch of several queries; "
        "default the CPU count, at most 4.",
    )
    faiss_blas_threshold: int = Field(
        default=4,
        ge=1,
        le=1_000_000,
        description="Micro-batches of at least this many queries search a flat index with one "
        "BLAS matrix product instead of one scan per query. On 2 cores with one thread the "
        "product was faster from 3 queries at 1M vectors and from 8 at 10k.",
    )
    faiss_nprobe: int | None = Field(
        default=None,
        ge=1,
        description="nprobe of IVF-PQ snapshots; unset keeps the value the indexer built with.",
    )
    faiss_ef_search: int | None = Field(
        default=None,
        ge=1,
        description="efSearch of HNSW snapshots; unset keeps the value the indexer built with.",
    )
    thumbnail_size: int = Field(
        default=256, ge=16, le=2048, description="Side in pixels of the square JPEG thumbnails."
    )
    host: str = Field(default="127.0.0.1", description="Address search-api listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port search-api listens on.")
    public_base_url: AnyHttpUrl | None = Field(
        default=None,
        description="Base URL of thumbnail_url and file_url; unset uses the URL of the request.",
    )
    log_level: str = Field(
        default="info", description="critical, error, warning, info or debug."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError("expected critical, error, warning, info or debug")
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would turn authentication on with a token no client can send.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "the API key is empty or only whitespace; set a non-blank key, or unset "
                "PIG_API_KEY to disable authentication"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"expected a JSON list of origins or a comma-separated list: {error}"
                ) from None
        return [origin.strip() for origin in text.split(",") if origin.strip()]

    @field_validator("index_dir")
    @classmethod
    def _check_index_dir(cls, value: Path) -> Path:
        index_dir = value.expanduser().resolve()
        create_hint = f"create it with `indexer ingest VIDEOS_DIR --index-dir {index_dir}`"
        if not index_dir.is_dir():
            raise ValueError(f"index directory {index_dir} does not exist; {create_hint}")
        if not (index_dir / "catalog.sqlite").is_file():
            raise ValueError(
                f"index directory {index_dir} has no catalog.sqlite, so it is not an index; "
                f"{create_hint}"
            )
        return index_dir

    @model_validator(mode="after")
    def _check_model_dir(self) -> "ApiSettings":
        checkpoint = self.model_dir
        if (checkpoint / "config.json").is_file():
            return self
        if self.checkpoint is None:
            raise ValueError(
                f"index directory {self.index_dir} has no model copy in {checkpoint}; re-run "
                f"`indexer ingest` on it, or set PIG_CHECKPOINT (--checkpoint) to the "
                f"checkpoint directory the index was built with"
            )
        raise ValueError(
            f"PIG_CHECKPOINT (--checkpoint) {checkpoint} is not a checkpoint directory "
            f"(config.json is missing); set it to a folder written by `pig-train fit` or "
            f"copied from an index directory's model/ folder"
        )

    @property
    def model_dir(self) -> Path:
        """Checkpoint directory the service loads its text model from."""
        if self.checkpoint is not None:
            return self.checkpoint.expanduser().resolve()
        return self.index_dir / "model"

    @property
    def follows_index_model(self) -> bool:
        """True when the model comes from INDEX_DIR/model and follows a rebuilt index."""
        return self.checkpoint is None


def environment_variable(field_name: str) -> str:
    """Return the environment variable of a settings field, e.g. PIG_INDEX_DIR."""
    return ENV_PREFIX + field_name.upper()


def describe_settings_error(
    error: ValidationError, option_names: dict[str, str] | None = None
) -> list[str]:
    """Turn a validation error of ApiSettings into one line per invalid field.

    Each line names the environment variable (and the command-line option, when
    ``option_names`` maps the field to one), the rejected value and the expected form.
    The value of PIG_API_KEY is never shown.
    """
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        location = item.get("loc") or ()
        if not location:
            lines.append(message)
            continue
        field_name = str(location[0])
        name = environment_variable(field_name)
        if option_names and field_name in option_names:
            name = f"{name} ({option_names[field_name]})"
        if item["type"] == "missing":
            lines.append(f"{name} is not set; {_describe_field(field_name)}")
            continue
        value = item.get("input")
        shown = "(hidden)" if field_name == "api_key" else repr(_plain_value(value))
        lines.append(f"invalid {name} {shown}: {message}")
    return lines


def _plain_value(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "(hidden)"
    if isinstance(value, Path):
        return str(value)
    return value


def _describe_field(field_name: str) -> str:
    field = ApiSettings.model_fields.get(field_name)
    description = field.description if field is not None else None
    return f"expected: {description}" if description else "it is required"


def settings_help() -> str:
    """Return one paragraph per setting: its environment variable, default and meaning."""
    paragraphs = []
    for field_name, field in ApiSettings.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "unset" if value is None or value == [] else f"default {value}"
        description = textwrap.fill(
            field.description or "", width=88, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
        paragraphs.append(f"  {environment_variable(field_name)} ({default})\n{description}")
    return "settings (environment variables):\n" + "\n".join(paragraphs)
