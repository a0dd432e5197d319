"""Video probing, segment and frame-time sampling, and frame decoding (decord, then PyAV)."""

from shared.video.decode import (
    BackendDecodeError,
    DecoderUnavailableError,
    decode_frames,
    decode_segments,
    decord_available,
)
from shared.video.errors import (
    CorruptVideoError,
    DecoderCrashError,
    DecodeTimeoutError,
    EmptyFileError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    VideoPermissionError,
)
from shared.video.probe import VideoInfo, probe
from shared.video.sampling import sample_times, segment_bounds

__all__ = [
    "BackendDecodeError",
    "CorruptVideoError",
    "DecodeTimeoutError",
    "DecoderCrashError",
    "DecoderUnavailableError",
    "EmptyFileError",
    "NoVideoStreamError",
    "NotAVideoError",
    "TruncatedVideoError",
    "UnsupportedCodecError",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoPermissionError",
    "decode_frames",
    "decode_segments",
    "decord_available",
    "probe",
    "sample_times",
    "segment_bounds",
]
