"""Decode frames at given times into small square RGB arrays.

Two backends serve the same contract:

- decord (first choice): its ``VideoReader`` scales frames inside the decoder, reads every
  packet's timestamp when it opens a file, and fetches a batch of frames with its own seeks.
- PyAV (fallback): used when decord is not installed, cannot open or decode a file, returns
  an unexpected shape, or reports timestamps that disagree with ``probe``.

Both map each requested time to the frame whose presentation timestamp is nearest, and a tie
goes to the earlier frame. Variable-frame-rate files therefore sample correctly. A video with
fewer frames than requested returns repeated frames, so the output always has exactly one
frame per requested time.
Frames are turned upright (rotation metadata), scaled so that the shorter side is ``size``
while decoding (a 4K frame never reaches the output at 4K), then centre-cropped to
``size x size``. 10-bit and 4:4:4 sources are converted to 8-bit RGB.

Every failure is raised as a ``shared.video.errors.VideoError`` subclass carrying the path and
a one-line reason; no decord or PyAV exception escapes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Literal

import av
import av.error
import numpy as np

from shared.video.errors import CorruptVideoError, UnsupportedCodecError, VideoError
from shared.video.probe import (
    VideoInfo,
    first_video_stream,
    open_container,
    probe,
)
from shared.video.sampling import sample_times

logger = logging.getLogger(__name__)

try:
    import decord
except (ImportError, OSError) as _error:  # a missing wheel or a missing shared library
    decord = None
    DECORD_IMPORT_ERROR: str | None = f"{type(_error).__name__}: {_error}"
else:
    DECORD_IMPORT_ERROR = None
    decord.logging.set_level(decord.logging.QUIET)

Backend = Literal["auto", "decord", "pyav"]
BACKENDS = ("auto", "decord", "pyav")

# The PyAV backend skips packets that fail to decode (the decoder conceals the damage, as
# players do) but raises CorruptVideoError when more than this fraction of the packets it read
# failed, and at least MIN_FAILED_PACKETS of them, because the frames are then mostly garbage.
MAX_FAILED_PACKET_FRACTION = 0.1
MIN_FAILED_PACKETS = 3

# PyAV seeks forward instead of decoding through the gap when the next requested time is more
# than this many seconds after the last decoded frame.
SEEK_GAP_S = 3.0

# Containers in which decord (FFmpeg 4 inside the decord 0.6 wheel) applies the display
# matrix itself. Rotated files in other containers go to PyAV, which rotates explicitly.
DECORD_ROTATION_CONTAINERS = ("mov", "mp4")

# Scaling filter of the PyAV backend. Bilinear is the default of the scale filter in the
# FFmpeg 4 build inside the decord 0.6 wheel, so both backends produce nearly the same pixels.
PYAV_INTERPOLATION = "BILINEAR"


class DecoderUnavailableError(RuntimeError):
    """Raised when a backend is requested by name but cannot be used on this machine."""


class BackendDecodeError(VideoError):
    """The backend that was forced by name failed on this file (no fallback was allowed)."""

    kind = "backend_failed"


def decord_available() -> bool:
    """Return whether the decord backend imported on this machine."""
    return decord is not None


def decode_frames(
    path: str | os.PathLike[str],
    times: Sequence[float],
    size: int,
    info: VideoInfo | None = None,
    backend: Backend = "auto",
) -> np.ndarray:
    """Decode the frames nearest to ``times`` (seconds) as uint8 RGB [T, size, size, 3].

    ``info`` saves a probe when the caller already has one. ``backend`` is "auto" (decord,
    then PyAV), or "decord" / "pyav" to force one backend without fallback.
    """
    path = os.fspath(path)
    times_array = _validate_request(times, size, backend)
    if info is None:
        info = probe(path)
    return _decode(path, times_array, size, info, backend)


def decode_segments(
    path: str | os.PathLike[str],
    segments: Sequence[tuple[float, float]],
    num_frames: int,
    size: int,
    info: VideoInfo | None = None,
    backend: Backend = "auto",
) -> list[np.ndarray]:
    """Decode ``num_frames`` frames of each (start, end) segment in one open of the file.

    The frame times of each segment are the bin middles of ``sample_times``. Returns one
    uint8 RGB array [num_frames, size, size, 3] per segment, in the order of ``segments``.
    """
    path = os.fspath(path)
    if len(segments) == 0:
        raise ValueError("segments must not be empty; pass at least one (start_s, end_s) pair")
    times: list[float] = []
    for start_s, end_s in segments:
        times.extend(sample_times(start_s, end_s, num_frames))
    times_array = _validate_request(times, size, backend)
    if info is None:
        info = probe(path)
    frames = _decode(path, times_array, size, info, backend)  # [S * T, size, size, 3]
    frames = frames.reshape(len(segments), num_frames, size, size, 3)  # [S, T, size, size, 3]
    return list(frames)


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Return (width, height) scaled so that the shorter side is ``size``, aspect kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Crop the middle ``size x size`` pixels of frames [..., H, W, 3]."""
    height, width = frames.shape[-3], frames.shape[-2]
    top = (height - size) // 2
    left = (width - size) // 2
    return frames[..., top : top + size, left : left + size, :]


def nearest_frame_indices(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Return, for each time, the index of the nearest timestamp (ties to the earlier frame)."""
    order = np.argsort(timestamps, kind="stable")
    sorted_stamps = timestamps[order]
    after = np.searchsorted(sorted_stamps, times, side="left")
    after = np.clip(after, 0, len(sorted_stamps) - 1)
    before = np.clip(after - 1, 0, len(sorted_stamps) - 1)
    take_before = np.abs(times - sorted_stamps[before]) <= np.abs(sorted_stamps[after] - times)
    return order[np.where(take_before, before, after)]


def _validate_request(times: Sequence[float], size: int, backend: str) -> np.ndarray:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (output side in pixels), got {size!r}")
    times_array = np.asarray(times, dtype=np.float64)
    if times_array.ndim != 1 or times_array.size == 0:
        raise ValueError(f"times must be a non-empty 1-D sequence of seconds, got {times!r}")
    if not np.all(np.isfinite(times_array)):
        raise ValueError(f"times must be finite seconds, got {times_array.tolist()}")
    if backend == "decord" and decord is None:
        raise DecoderUnavailableError(
            f"decord is not importable here ({DECORD_IMPORT_ERROR}); use backend='pyav' or 'auto'"
        )
    return times_array


def _decode(
    path: str, times: np.ndarray, size: int, info: VideoInfo, backend: str
) -> np.ndarray:
    if backend in ("auto", "decord") and decord is not None:
        unsuitable = _decord_unsuitable(info)
        if unsuitable is None:
            try:
                frames = _decode_with_decord(path, times, size, info)
            except _DecordFailure as failure:
                if backend == "decord":
                    raise BackendDecodeError(path, f"decord failed: {failure}") from failure
                logger.info("%s: decord failed (%s); decoding with PyAV", path, failure)
            else:
                logger.debug("%s: %d frames decoded with decord", path, len(frames))
                return frames
        elif backend == "decord":
            raise BackendDecodeError(path, f"decord cannot serve this file: {unsuitable}")
        else:
            logger.debug("%s: %s; decoding with PyAV", path, unsuitable)

    frames = _decode_with_pyav(path, times, size, info)
    logger.debug("%s: %d frames decoded with PyAV", path, len(frames))
    return frames


# ---------------------------------------------------------------------------------------------
# decord backend


class _DecordFailure(Exception):
    """Internal: decord could not serve a file, for the reason in the message."""


def _decord_unsuitable(info: VideoInfo) -> str | None:
    """Return why decord must not decode this file, or None when it may."""
    if info.rotation and not any(
        name in info.container.split(",") for name in DECORD_ROTATION_CONTAINERS
    ):
        return f"rotation {info.rotation} in a {info.container} container is not applied by decord"
    return None


def _decode_with_decord(
    path: str, times: np.ndarray, size: int, info: VideoInfo
) -> np.ndarray:
    # decord scales to exactly width x height of the upright picture, so pass the aspect-kept size.
    width, height = scaled_size(info.display_width, info.display_height, size)
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height)
        count = len(reader)
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64)
        _check_decord_timestamps(stamps, count, info)
        indices = nearest_frame_indices(stamps[:, 0], times)
        unique, inverse = np.unique(indices, return_inverse=True)
        batch = _to_numpy(reader.get_batch(unique.tolist()))  # [U, height, width, 3]
        del reader
    except _DecordFailure:
        raise
    except Exception as error:  # decord raises DECORDError, RuntimeError and others
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise _DecordFailure(f"{type(error).__name__}: {first_line[:200]}") from error

    expected = (len(unique), height, width, 3)
    if batch.shape != expected or batch.dtype != np.uint8:
        # decord 0.6 returns a wrong channel count for some scaled sizes instead of failing.
        raise _DecordFailure(f"returned {batch.dtype} {batch.shape}, expected uint8 {expected}")
    frames = batch[inverse]  # [T, height, width, 3]
    return np.ascontiguousarray(center_crop(frames, size))


def _check_decord_timestamps(stamps: np.ndarray, count: int, info: VideoInfo) -> None:
    if count == 0:
        raise _DecordFailure("decord found no frames")
    if stamps.shape != (count, 2) or not np.all(np.isfinite(stamps)):
        raise _DecordFailure("decord reported invalid frame timestamps")
    if abs(count - info.frame_count) > 0.1 * info.frame_count + 2:
        raise _DecordFailure(f"decord counts {count} frames, probe counted {info.frame_count}")
    slack = max(1.0, 0.1 * info.duration_s)
    if stamps[:, 0].min() < -slack or stamps[:, 0].max() > info.duration_s + slack:
        raise _DecordFailure(
            f"decord timestamps span {stamps[:, 0].min():.3f}..{stamps[:, 0].max():.3f} s, "
            f"outside the probed duration {info.duration_s:.3f} s"
        )


def _to_numpy(batch: object) -> np.ndarray:
    # Another module may have switched decord's global bridge to torch or another framework.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


# ---------------------------------------------------------------------------------------------
# PyAV backend


class _DecodeStats:
    """Counts of packets the PyAV backend could not decode."""

    def __init__(self) -> None:
        self.packets = 0
        self.failed_packets = 0
        self.last_error: str | None = None


def _decode_with_pyav(
    path: str, times: np.ndarray, size: int, info: VideoInfo
) -> np.ndarray:
    container = open_container(path)
    try:
        stream = first_video_stream(path, container)
        if stream.codec_context is None:
            raise UnsupportedCodecError(path, "FFmpeg has no decoder for the video stream")
        stream.thread_type = "AUTO"
        return _pick_frames(path, container, stream, times, size, info)
    except VideoError:
        raise
    except av.error.DecoderNotFoundError as error:
        raise UnsupportedCodecError(path, f"no decoder for the video stream: {error}") from error
    except av.error.FFmpegError as error:
        raise CorruptVideoError(path, f"decoding failed: {error}") from error
    finally:
        container.close()


def _pick_frames(
    path: str,
    container: av.container.InputContainer,
    stream: av.VideoStream,
    times: np.ndarray,
    size: int,
    info: VideoInfo,
) -> np.ndarray:
    """Decode forward once, keeping for each requested time the nearest frame."""
    order = np.argsort(times, kind="stable")
    targets = times[order]
    count = len(targets)
    picked: list[np.ndarray | None] = [None] * count
    stats = _DecodeStats()
    frame_interval = 1.0 / info.fps if info.fps > 0 else 0.04

    # Converted frames by their decode serial number, so a frame picked twice converts once.
    converted: dict[int, np.ndarray] = {}

    def convert(serial: int, frame: av.VideoFrame) -> np.ndarray:
        if serial not in converted:
            converted[serial] = _frame_to_rgb(frame, size, info)
        return converted[serial]

    next_target = 0
    previous: tuple[float, int, av.VideoFrame] | None = None
    last_time = -math.inf
    last_seek_target = -1
    serial = 0
    seek_allowed = True
    reached_end = False

    while next_target < count and not reached_end:
        target = float(targets[next_target])
        gap_start = last_time if previous is not None else 0.0
        if seek_allowed and target - gap_start > SEEK_GAP_S and last_seek_target != next_target:
            last_seek_target = next_target
            seek_allowed = _seek(container, stream, info, target - 2 * frame_interval)

        reached_end = True
        for frame_time, frame in _decoded_frames(container, stream, info, stats):
            if frame_time <= last_time:
                continue  # a seek landed before frames that were already considered
            serial += 1
            while next_target < count and targets[next_target] <= frame_time:
                wanted = float(targets[next_target])
                if previous is not None and wanted - previous[0] <= frame_time - wanted:
                    picked[next_target] = convert(previous[1], previous[2])
                else:
                    picked[next_target] = convert(serial, frame)
                next_target += 1
            previous = (frame_time, serial, frame)
            last_time = frame_time
            if next_target >= count:
                reached_end = False
                break
            if (
                seek_allowed
                and targets[next_target] - frame_time > SEEK_GAP_S
                and last_seek_target != next_target
            ):
                reached_end = False
                break

    if previous is None:
        detail = f" (last error: {stats.last_error})" if stats.last_error else ""
        raise CorruptVideoError(path, f"no frame of the video stream could be decoded{detail}")
    if next_target < count:
        _check_end_reached(path, last_time, float(targets[-1]), info, stats)
        remaining = convert(previous[1], previous[2])
        for index in range(next_target, count):
            picked[index] = remaining
    if (
        stats.failed_packets >= MIN_FAILED_PACKETS
        and stats.failed_packets > MAX_FAILED_PACKET_FRACTION * stats.packets
    ):
        raise CorruptVideoError(
            path,
            f"{stats.failed_packets} of {stats.packets} packets could not be decoded "
            f"(last error: {stats.last_error})",
        )
    if stats.failed_packets:
        logger.warning(
            "%s: %d packets could not be decoded and were skipped (last error: %s)",
            path,
            stats.failed_packets,
            stats.last_error,
        )

    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    frames[order] = np.stack(picked)  # back to the caller's order
    return frames


def _decoded_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    info: VideoInfo,
    stats: _DecodeStats,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Yield (seconds from the first frame, frame) from the current position on."""
    time_base = stream.time_base
    previous_time = -1.0 / info.fps if info.fps > 0 else -0.04
    for packet in container.demux(stream):
        stats.packets += 1
        try:
            frames = packet.decode()
        except av.error.InvalidDataError as error:
            # Like players, skip a damaged packet; the decoder conceals the damage.
            stats.failed_packets += 1
            stats.last_error = str(error)
            continue
        for frame in frames:
            if frame.pts is not None and time_base is not None:
                frame_time = float(frame.pts * time_base) - info.start_s
            else:
                frame_time = previous_time + (1.0 / info.fps if info.fps > 0 else 0.04)
            previous_time = frame_time
            yield frame_time, frame


def _seek(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    info: VideoInfo,
    time_s: float,
) -> bool:
    """Seek to the key frame at or before ``time_s``; return False when the file cannot seek."""
    offset = int((max(0.0, time_s) + info.start_s) / stream.time_base)
    try:
        container.seek(offset, backward=True, any_frame=False, stream=stream)
    except av.error.FFmpegError as error:
        logger.debug("%s: seeking failed (%s); decoding sequentially", info.path, error)
        return False
    return True


def _check_end_reached(
    path: str, last_time: float, last_target: float, info: VideoInfo, stats: _DecodeStats
) -> None:
    """Raise when decoding stopped far before the probed end of the stream."""
    slack = max(1.0, 0.1 * info.duration_s, 2.0 / info.fps if info.fps > 0 else 0.0)
    if info.duration_s - last_time <= slack or last_target - last_time <= slack:
        return
    detail = f"; last error: {stats.last_error}" if stats.last_error else ""
    raise CorruptVideoError(
        path,
        f"decoding stopped at {last_time:.2f} s of {info.duration_s:.2f} s{detail}",
    )


def _frame_to_rgb(frame: av.VideoFrame, size: int, info: VideoInfo) -> np.ndarray:
    """Scale while converting to RGB, turn upright, then centre-crop: [size, size, 3]."""
    display_width, display_height = scaled_size(info.display_width, info.display_height, size)
    if info.rotation in (90, 270):
        coded_width, coded_height = display_height, display_width
    else:
        coded_width, coded_height = display_width, display_height
    rgb = frame.reformat(
        width=coded_width,
        height=coded_height,
        format="rgb24",
        interpolation=PYAV_INTERPOLATION,
    ).to_ndarray()  # [coded_height, coded_width, 3]
    if info.rotation:
        # The display-matrix angle is counter-clockwise, like np.rot90 with positive k.
        rgb = np.rot90(rgb, k=info.rotation // 90)  # [display_height, display_width, 3]
    return np.ascontiguousarray(center_crop(rgb, size))
