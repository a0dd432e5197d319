"""Common types for captioned-video datasets and the video-file lookup every reader shares."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

# Extensions tried, in this order, when an annotation names a video without its extension.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".3gp", ".mpg", ".mpeg", ".wmv", ".flv")

# How many missing names the error message lists before it stops.
MISSING_NAMES_SHOWN = 10

OnMissing = Literal["raise", "skip"]


class DatasetFormatError(ValueError):
    """An annotation file that does not have the expected structure."""


class MissingVideosError(FileNotFoundError):
    """Video files referenced by the annotations that are not on disk."""

    def __init__(self, dataset: str, video_dir: Path, missing: Sequence[str], total: int) -> None:
        self.dataset = dataset
        self.video_dir = video_dir
        self.missing = list(missing)
        self.total = total
        shown = ", ".join(self.missing[:MISSING_NAMES_SHOWN])
        more = len(self.missing) - MISSING_NAMES_SHOWN
        suffix = f" and {more} more" if more > 0 else ""
        super().__init__(
            f"{dataset}: {len(self.missing)} of {total} videos not found in {video_dir}: "
            f"{shown}{suffix}. Download or convert the missing files, point video_dir at the "
            f"folder that has them, or pass on_missing='skip' to leave them out."
        )


@dataclasses.dataclass(frozen=True)
class CaptionedVideo:
    """One video with all of its captions."""

    video_id: str  # identifier from the annotations, e.g. "video7010"
    path: Path  # the video file on disk
    captions: tuple[str, ...]  # one or more captions; DiDeMo readers store one joined paragraph


@dataclasses.dataclass(frozen=True)
class CaptionDataset:
    """The videos of one split of one dataset."""

    name: str  # dataset and split, e.g. "msrvtt-1k-A-test"
    videos: tuple[CaptionedVideo, ...]  # in annotation order, video ids unique

    def __len__(self) -> int:
        return len(self.videos)

    def caption_targets(self) -> tuple[list[str], list[int]]:
        """Flatten to (captions, video index of each caption) for retrieval evaluation."""
        captions: list[str] = []
        targets: list[int] = []
        for index, video in enumerate(self.videos):
            captions.extend(video.captions)
            targets.extend([index] * len(video.captions))
        return captions, targets

    def subset(self, count: int) -> "CaptionDataset":
        """Return the first ``count`` videos, for quick runs."""
        return CaptionDataset(name=self.name, videos=self.videos[:count])


class VideoDirectory:
    """A folder of video files, listed once, looked up by file name or by stem."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"video directory {self.root} not found; pass the folder that contains the video files"
            )
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, list[Path]] = {}
        for entry in os.scandir(self.root):
            if not entry.is_file():
                continue
            path = Path(entry.path)
            self._by_name[entry.name] = path
            self._by_stem.setdefault(path.stem, []).append(path)

    def find(self, name: str) -> Path | None:
        """Return the file called ``name``, else a file whose stem is ``name`` (or ``name``'s stem)."""
        if name in self._by_name:
            return self._by_name[name]
        stem = name
        if Path(name).suffix.lower() in VIDEO_EXTENSIONS:
            stem = Path(name).stem
        candidates = self._by_stem.get(stem, [])
        for extension in VIDEO_EXTENSIONS:
            for candidate in candidates:
                if candidate.suffix.lower() == extension:
                    return candidate
        return None


def build_dataset(
    name: str,
    video_dir: Path | str,
    entries: Iterable[tuple[str, str, Sequence[str]]],
    on_missing: OnMissing = "raise",
) -> CaptionDataset:
    """Resolve video files and build a dataset from (video id, file name, captions) entries.

    Captions of repeated video ids are merged in order. Missing files are collected and reported
    together: ``on_missing="raise"`` raises one ``MissingVideosError``, ``"skip"`` logs one warning
    and leaves those videos out.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    directory = VideoDirectory(video_dir)

    merged: dict[str, tuple[str, list[str]]] = {}
    for video_id, file_name, captions in entries:
        if video_id not in merged:
            merged[video_id] = (file_name, [])
        merged[video_id][1].extend(captions)

    videos: list[CaptionedVideo] = []
    missing: list[str] = []
    for video_id, (file_name, captions) in merged.items():
        if not captions:
            raise DatasetFormatError(f"{name}: video {video_id!r} has no captions")
        path = directory.find(file_name)
        if path is None:
            missing.append(file_name)
            continue
        videos.append(CaptionedVideo(video_id=video_id, path=path, captions=tuple(captions)))

    if missing:
        error = MissingVideosError(name, directory.root, missing, total=len(merged))
        if on_missing == "raise":
            raise error
        logger.warning("%s; skipping them", error)
    if not videos:
        raise DatasetFormatError(f"{name}: no videos left to use in {directory.root}")
    return CaptionDataset(name=name, videos=tuple(videos))


def load_json(path: Path | str) -> object:
    """Parse a JSON annotation file, raising DatasetFormatError that names the file when invalid."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path} is not valid JSON: {error}") from error
