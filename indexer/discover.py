"""Discovery stage: find the video files under the ingest paths.

Directories are walked recursively in sorted order. Symbolic links to directories are followed,
but each real directory is entered once, so a link loop ends the walk instead of repeating it.
Files are identified by their real path, so a file reachable under two names is listed once.

A file is a candidate when its extension is a known video extension, or when its extension is
not a known non-video one and its first bytes carry the signature of a media container. The
decoder then either indexes a candidate or records it as failed with a reason, so an audio-only
MP4 (.m4a) is reported as "no video stream" rather than silently ignored. Hidden files and
directories (names starting with ".") are skipped.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {
        ".3g2", ".3gp", ".asf", ".avi", ".divx", ".dv", ".f4v", ".flv", ".gif", ".h264", ".h265",
        ".hevc", ".m1v", ".m2t", ".m2ts", ".m2v", ".m4v", ".mj2", ".mjpeg", ".mjpg", ".mkv",
        ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".nut", ".ogv", ".qt", ".rm", ".rmvb",
        ".ts", ".vob", ".webm", ".wmv", ".y4m",
    }
)  # fmt: skip

# Extensions of files that are never videos; they are skipped without reading them.
NON_VIDEO_EXTENSIONS = frozenset(
    {
        ".txt", ".md", ".json", ".csv", ".xml", ".yaml", ".yml", ".srt", ".vtt", ".ass", ".nfo",
        ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".svg",
        ".mp3", ".aac", ".flac", ".wav", ".opus", ".wma", ".pdf", ".zip", ".gz", ".tar",
        ".py", ".sqlite", ".faiss", ".lock", ".tmp", ".part",
    }
)  # fmt: skip


@dataclass
class DiscoveredFile:
    """A video file found by discovery."""

    path: str  # absolute real path
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds since the epoch


@dataclass
class DiscoveryResult:
    """Everything discovery found under the requested paths."""

    files: list[DiscoveredFile] = field(default_factory=list)  # candidates, sorted by path
    missing: list[str] = field(default_factory=list)  # requested paths that do not exist
    skipped_loops: int = 0  # directory links not followed because they were already visited
    ignored_files: int = 0  # regular files that are not videos
    hidden_skipped: int = 0  # hidden files and folders (names starting with ".") not looked at
    roots: list[str] = field(default_factory=list)  # real paths of the existing requested paths


def has_video_signature(header: bytes) -> bool:
    """Return True when ``header`` (the first bytes of a file) starts like a video container."""
    if len(header) >= 12 and header[4:8] == b"ftyp":  # ISO BMFF: MP4, MOV, 3GP
        return True
    if header.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, WebM
        return True
    if header.startswith(b"RIFF") and header[8:12] == b"AVI ":
        return True
    if header.startswith((b"GIF87a", b"GIF89a", b"FLV\x01", b"YUV4MPEG2", b"OggS")):
        return True
    if header.startswith(b"\x00\x00\x01\xba") or header.startswith(b"\x00\x00\x01\xb3"):  # MPEG-PS/ES
        return True
    if header.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):  # ASF: WMV
        return True
    if header[4:8] in (b"moov", b"mdat", b"wide"):  # QuickTime without an ftyp box
        return True
    # MPEG transport stream: a sync byte every 188 bytes.
    return len(header) >= 377 and header[0] == 0x47 and header[188] == 0x47 and header[376] == 0x47


def is_video_candidate(path: str) -> bool:
    """Return True when ``path`` should go to the decoder (see the module docstring)."""
    extension = os.path.splitext(path)[1].lower()
    if extension in VIDEO_EXTENSIONS:
        return True
    if extension in NON_VIDEO_EXTENSIONS:
        return False
    try:
        with open(path, "rb") as handle:
            header = handle.read(512)
    except OSError as error:
        logger.warning("cannot read %s to check its type: %s", path, error)
        return False
    return has_video_signature(header)


def discover(paths: Iterable[str | os.PathLike[str]], exclude: Iterable[str | os.PathLike[str]] = ()) -> DiscoveryResult:
    """Find the video files under ``paths`` (files or directories), skipping ``exclude`` dirs."""
    result = DiscoveryResult()
    excluded = {os.path.realpath(p) for p in exclude}
    seen_files: set[str] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def consider(found_path: str) -> None:
        real_path = os.path.realpath(found_path)
        if real_path in seen_files:
            return
        seen_files.add(real_path)
        try:
            info = os.stat(real_path)
        except OSError as error:
            # Name the path as found: for a broken link, its target means nothing to the user.
            logger.warning("skipping %s: cannot read its file status: %s", found_path, error)
            return
        if not stat.S_ISREG(info.st_mode):
            result.ignored_files += 1
            return
        if not is_video_candidate(real_path):
            result.ignored_files += 1
            return
        result.files.append(DiscoveredFile(real_path, info.st_size, info.st_mtime_ns))

    for requested in paths:
        real = os.path.realpath(requested)
        if not os.path.exists(real):
            result.missing.append(os.fspath(requested))
            continue
        result.roots.append(real)
        if not os.path.isdir(real):
            consider(real)
            continue
        for directory, dirnames, filenames in os.walk(real, followlinks=True):
            directory_stat = os.stat(directory)
            key = (directory_stat.st_dev, directory_stat.st_ino)
            if key in seen_dirs or os.path.realpath(directory) in excluded:
                if key in seen_dirs:
                    result.skipped_loops += 1
                dirnames[:] = []
                continue
            seen_dirs.add(key)
            hidden = [name for name in dirnames + filenames if name.startswith(".")]
            result.hidden_skipped += len(hidden)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    consider(os.path.join(directory, name))

    result.files.sort(key=lambda f: f.path)
    return result
