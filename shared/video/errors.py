"""Exceptions raised when a video file cannot be probed or decoded.

Every error carries the file ``path``, a one-line ``reason`` and a stable short ``kind`` that
the indexer stores as the failure category. ``str(error)`` is ``"PATH: reason"``. The errors
pickle cleanly, so they can cross from a decode worker process to the indexer's main process.
"""

from __future__ import annotations

import os


class VideoError(Exception):
    """Base class of all errors about one video file."""

    kind = "video_error"

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        path = os.fspath(path)
        # Keep the reason on one line, because it is shown in tables and stored in the catalog.
        reason = " ".join(str(reason).split())
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class VideoNotFoundError(VideoError):
    """The path does not exist (or vanished between discovery and decoding)."""

    kind = "not_found"


class VideoPermissionError(VideoError):
    """The file exists but the process may not read it."""

    kind = "permission_denied"


class EmptyFileError(VideoError):
    """The file has zero bytes."""

    kind = "empty_file"


class NotAVideoError(VideoError):
    """FFmpeg recognises no media container in the file."""

    kind = "not_a_video"


class NoVideoStreamError(VideoError):
    """The container opens but contains no video stream (audio only, subtitles only)."""

    kind = "no_video_stream"


class TruncatedVideoError(VideoError):
    """The file ends before the data its container header or index refers to."""

    kind = "truncated"


class UnsupportedCodecError(VideoError):
    """No decoder is available for the video stream's codec."""

    kind = "unsupported_codec"


class CorruptVideoError(VideoError):
    """The stream is damaged: packets or frames in the file cannot be demuxed or decoded."""

    kind = "corrupt"


class DecodeTimeoutError(VideoError):
    """Decoding took longer than the allowed time; raised by the indexer's worker supervisor."""

    kind = "decode_timeout"


class DecoderCrashError(VideoError):
    """The decoding process died (for example a segfault inside a decoder library)."""

    kind = "decoder_crash"


# All error classes by kind, so a stored kind can be mapped back to its class.
ERROR_CLASSES: dict[str, type[VideoError]] = {
    cls.kind: cls
    for cls in (
        VideoError,
        VideoNotFoundError,
        VideoPermissionError,
        EmptyFileError,
        NotAVideoError,
        NoVideoStreamError,
        TruncatedVideoError,
        UnsupportedCodecError,
        CorruptVideoError,
        DecodeTimeoutError,
        DecoderCrashError,
    )
}
