"""Settings of the indexer, read from command-line options and ``PIG_*`` environment variables.

Each option ``--some-option`` has the environment variable ``PIG_SOME_OPTION``. A command-line
value wins over the environment, which wins over the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_workers() -> int:
    """Return one decode worker per CPU core but one (the main process encodes), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class IndexerSettings(BaseSettings):
    """Every setting of ``indexer ingest``; the CLI help text repeats these descriptions."""

    model_config = SettingsConfigDict(env_prefix="PIG_", extra="ignore")

    index_dir: Path = Field(
        Path("index"),
        description="index directory holding catalog.sqlite, snapshots/, CURRENT and model/",
    )
    checkpoint: Path | None = Field(
        None,
        description="PIG checkpoint directory (config.json + model.safetensors); "
        "default: the index's own model/ copy when it exists",
    )
    model: str | None = Field(
        None, description="open_clip model name, e.g. ViT-B-32 or pig-tiny (instead of --checkpoint)"
    )
    pretrained: str | None = Field(
        None,
        description="with --model: open_clip pretrained tag (e.g. openai) or a local weights "
        "file; without it the backbone has random weights",
    )
    head: Literal["pig", "meanp"] = Field(
        "pig", description="video head with --model: pig or meanp (query-independent heads only)"
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="device that runs the model: auto picks CUDA when available"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="encode precision: auto is bf16/fp16 on CUDA and fp32 on the CPU"
    )
    frames: int | None = Field(
        None, ge=1, description="frames sampled per segment (default: the model's num_frames)"
    )
    segment_seconds: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="segment length in seconds; each segment gets its own vector"
    )
    workers: int = Field(
        default_factory=default_workers, ge=1, description="decode worker processes"
    )
    batch_size: int = Field(16, ge=1, description="segments per encode batch")
    decode_timeout: float = Field(
        300.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds one file may take to decode before its worker is killed and the "
        "file recorded as failed",
    )
    snapshot_every: int = Field(
        50,
        ge=1,
        description="publish an intermediate snapshot after this many committed encode batches",
    )
    index_type: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto",
        description="FAISS index: auto is exact flat search below --approx-threshold vectors",
    )
    approx_threshold: int = Field(
        1_000_000, ge=1, description="vector count from which auto picks an approximate index"
    )
    memory_budget_gb: float = Field(
        16.0, gt=0, allow_inf_nan=False, description="GiB of RAM the index may take; auto picks IVF-PQ beyond it"
    )
    keep_snapshots: int = Field(3, ge=2, description="snapshots kept on disk (at least 2)")

    @field_validator("model", "pretrained", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_model_source(self) -> IndexerSettings:
        if self.checkpoint is not None and self.model is not None:
            raise ValueError(
                f"both a checkpoint ({self.checkpoint}) and a model name ({self.model}) are set; "
                f"pass only one (check PIG_CHECKPOINT and PIG_MODEL too)"
            )
        if self.pretrained is not None and self.model is None:
            raise ValueError(f"--pretrained {self.pretrained} needs --model NAME")
        return self
