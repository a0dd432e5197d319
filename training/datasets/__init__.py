"""Readers for captioned-video datasets and a config model that selects one."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from training.datasets.base import (
    CaptionDataset,
    CaptionedVideo,
    DatasetFormatError,
    MissingVideosError,
    VideoDirectory,
    build_dataset,
)
from training.datasets.didemo import read_didemo
from training.datasets.msrvtt import (
    read_caption_jsonl,
    read_msrvtt_jsfusion_test,
    read_msrvtt_official,
    read_msrvtt_train,
)
from training.datasets.msvd import read_msvd
from training.datasets.vatex import read_vatex

DatasetFormat = Literal["jsonl", "msrvtt-train", "msrvtt-1k-A", "msrvtt-official", "msvd", "vatex", "didemo"]

# Fields each format requires besides "format" (video_dir is optional only for jsonl).
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "jsonl": ("annotations",),
    "msrvtt-train": ("annotations", "split_file", "video_dir"),
    "msrvtt-1k-A": ("annotations", "video_dir"),
    "msrvtt-official": ("annotations", "split", "video_dir"),
    "msvd": ("annotations", "split", "split_file", "video_dir"),
    "vatex": ("annotations", "video_dir"),
    "didemo": ("annotations", "video_dir"),
}


class DataSource(BaseModel):
    """One split of one dataset, as written in a training or evaluation config.

    ``annotations`` is the main annotation file: the JSON-lines file, ``MSRVTT_data.json``,
    ``MSRVTT_JSFUSION_test.csv``, MSVD's ``AllVideoDescriptions.txt``, or the VATEX or DiDeMo
    JSON. ``split_file`` is the MSR-VTT train list (``MSRVTT_train.9k.csv``) or the MSVD split
    list, or MSVD's ``youtube_mapping.txt`` when its name ends in ``mapping.txt``.
    """

    model_config = ConfigDict(extra="forbid")

    format: DatasetFormat = "jsonl"
    annotations: Path
    video_dir: Path | None = None
    split_file: Path | None = None
    split: str | None = None
    on_missing: Literal["raise", "skip"] = "raise"
    limit: int | None = None  # keep only the first N videos, for quick runs

    @model_validator(mode="after")
    def _check_required(self) -> "DataSource":
        missing = [field for field in _REQUIRED_FIELDS[self.format] if getattr(self, field) is None]
        if missing:
            raise ValueError(f"data format {self.format!r} requires {', '.join(missing)}")
        return self

    def load(self) -> CaptionDataset:
        """Read the split, checking that every referenced video file exists."""
        dataset = self._read()
        if self.limit is not None:
            dataset = dataset.subset(self.limit)
        return dataset

    def _read(self) -> CaptionDataset:
        if self.format == "jsonl":
            return read_caption_jsonl(self.annotations, self.video_dir, self.on_missing)
        if self.format == "msrvtt-train":
            return read_msrvtt_train(self.annotations, self.split_file, self.video_dir, self.on_missing)
        if self.format == "msrvtt-1k-A":
            return read_msrvtt_jsfusion_test(self.annotations, self.video_dir, self.on_missing)
        if self.format == "msrvtt-official":
            return read_msrvtt_official(self.annotations, self.split, self.video_dir, self.on_missing)
        if self.format == "msvd":
            split_list = mapping = None
            if self.split_file is not None and self.split_file.name.endswith("mapping.txt"):
                mapping = self.split_file
            else:
                split_list = self.split_file
            return read_msvd(self.annotations, self.video_dir, self.split, split_list, mapping, self.on_missing)
        if self.format == "vatex":
            return read_vatex(self.annotations, self.video_dir, self.on_missing)
        return read_didemo(self.annotations, self.video_dir, self.on_missing)


__all__ = [
    "CaptionDataset",
    "CaptionedVideo",
    "DataSource",
    "DatasetFormatError",
    "MissingVideosError",
    "VideoDirectory",
    "build_dataset",
    "read_caption_jsonl",
    "read_didemo",
    "read_msrvtt_jsfusion_test",
    "read_msrvtt_official",
    "read_msrvtt_train",
    "read_msvd",
    "read_vatex",
]
