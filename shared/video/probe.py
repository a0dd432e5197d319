"""Probe a video file with PyAV: duration, frame rate, frame count, size, codec and rotation.

Times in this package are seconds from the first frame of the video stream, so a stream whose
timestamps start at 1.4 s (common in MPEG-TS) still starts at 0.0 here.

How the duration and the frame count are determined, because container headers lie:

1. The declared duration is the video stream's duration, else the container's duration.
2. When the stream declares a frame count, the demuxer seeks to the declared end and reads the
   packets from there to the end of the file (no decoding). The end of the last video packet
   is the real end, so a header that is too long or too short does not matter.
3. Every packet of the file is demuxed and the video packets are counted in three cases: no
   frame count is declared, that seek fails or finds no packet, or the declared frame count
   differs from duration x frame rate by more than 10 % plus two frames.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import av.error

from shared.video.errors import (
    CorruptVideoError,
    EmptyFileError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    VideoPermissionError,
)

logger = logging.getLogger(__name__)

# Packets that may fail to decode before probing gives up on finding a first frame.
MAX_UNDECODABLE_PACKETS = 64

# Container formats (FFmpeg demuxer names) whose index lists every packet's byte position.
INDEXED_CONTAINERS = ("mov", "mp4")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Properties of a video file's first video stream."""

    # Path of the probed file, as given.
    path: str
    # Seconds from the first frame's presentation time to the end of the last frame.
    duration_s: float
    # Average frames per second.
    fps: float
    # Number of frames in the video stream (counted when the header does not say or is wrong).
    frame_count: int
    # Width of the coded frames in pixels, before rotation.
    width: int
    # Height of the coded frames in pixels, before rotation.
    height: int
    # FFmpeg decoder name, for example "h264", "hevc", "vp9" or "libdav1d".
    codec: str
    # FFmpeg pixel format of the decoded frames, for example "yuv420p" or "yuv420p10le".
    pix_fmt: str
    # Counter-clockwise rotation in degrees (0, 90, 180 or 270) that turns a decoded frame
    # upright, as in the display matrix (ffprobe prints the same angle as "rotation").
    rotation: int
    # Whether the file also has an audio stream.
    has_audio: bool
    # FFmpeg demuxer name of the container, for example "matroska,webm" or "mov,mp4,...".
    container: str
    # Presentation time of the first frame in seconds, in the stream's own clock; times in
    # this package are relative to it.
    start_s: float = 0.0

    @property
    def display_width(self) -> int:
        """Width of the upright picture in pixels, after rotation."""
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        """Height of the upright picture in pixels, after rotation."""
        return self.width if self.rotation in (90, 270) else self.height


@dataclasses.dataclass
class _PacketScan:
    """Packet counts, timestamps and byte offsets found by demuxing a range of packets."""

    # Video packets seen.
    video_packets: int = 0
    # Smallest and largest video presentation time seen, in stream time-base units.
    first_pts: int | None = None
    last_pts: int | None = None
    # End of the last video packet (pts + duration) in stream time-base units.
    end_pts: int | None = None
    # Largest byte offset reached by any packet of any stream.
    last_byte: int = 0
    # The demuxer error that stopped the scan, if any.
    error: str | None = None


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the properties of ``path``'s first video stream.

    Decodes the first frame (for the pixel format and the rotation, and to prove that a decoder
    exists) and demuxes packets as the module docstring describes. Raises a ``VideoError``
    subclass, never a PyAV exception.
    """
    path = os.fspath(path)
    file_size = check_readable_file(path)
    container = open_container(path)
    try:
        return _probe_open_container(path, container, file_size)
    except VideoError:
        raise
    except av.error.FFmpegError as error:
        raise CorruptVideoError(path, f"probing failed: {error}") from error
    finally:
        container.close()


def check_readable_file(path: str) -> int:
    """Return the size of ``path`` in bytes; raise when it is missing, unreadable or empty."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as error:
        raise VideoNotFoundError(path, "file not found") from error
    except PermissionError as error:
        raise VideoPermissionError(path, "permission denied when reading the file") from error
    if not os.access(path, os.R_OK):
        raise VideoPermissionError(path, "permission denied when reading the file")
    if os.path.isdir(path):
        raise NotAVideoError(path, "path is a directory, not a video file")
    if size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    return size


def open_container(path: str) -> av.container.InputContainer:
    """Open ``path`` with PyAV, mapping every failure to a ``VideoError`` subclass."""
    try:
        return av.open(path, mode="r")
    except FileNotFoundError as error:
        raise VideoNotFoundError(path, "file not found") from error
    except PermissionError as error:
        raise VideoPermissionError(path, "permission denied when reading the file") from error
    except av.error.InvalidDataError as error:
        truncation = iso_bmff_truncation(path)
        if truncation is not None:
            raise TruncatedVideoError(path, truncation) from error
        raise NotAVideoError(path, "FFmpeg recognises no media container in the file") from error
    except av.error.FFmpegError as error:
        raise NotAVideoError(path, f"FFmpeg cannot open the file: {error}") from error
    except (AttributeError, TypeError, ValueError) as error:
        # PyAV 18 fails while wrapping a stream whose codec FFmpeg does not know (for example
        # an AVI with an unknown FourCC) with AttributeError on the missing codec descriptor.
        raise UnsupportedCodecError(
            path, f"PyAV cannot set up a stream of this file, probably an unknown codec: {error}"
        ) from error


def iso_bmff_truncation(path: str) -> str | None:
    """Return why an MP4/MOV file looks cut short, or None when it does not look like one.

    Walks the top-level boxes (atoms). A box that extends past the end of the file, or a file
    with media data but no ``moov`` box (the index), is what a partial copy or a recording
    that was never finalised looks like.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(12)
            if len(header) < 8 or header[4:8] != b"ftyp":
                return None
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            boxes = []
            while offset + 8 <= size:
                handle.seek(offset)
                box_header = handle.read(16)
                box_size = int.from_bytes(box_header[0:4], "big")
                box_type = box_header[4:8].decode("latin-1")
                if box_size == 1 and len(box_header) >= 16:
                    box_size = int.from_bytes(box_header[8:16], "big")
                elif box_size == 0:
                    box_size = size - offset
                if box_size < 8:
                    return None
                boxes.append(box_type)
                if offset + box_size > size:
                    return (
                        f"MP4 box '{box_type}' at byte {offset} needs {box_size} bytes but the "
                        f"file ends after {size - offset}; the file is truncated"
                    )
                offset += box_size
    except OSError:
        return None
    if "moov" not in boxes:
        return "MP4 file has no 'moov' box (index); the file is truncated or was never finalised"
    return None


def first_video_stream(path: str, container: av.container.InputContainer) -> av.VideoStream:
    """Return the first real video stream, skipping cover art; raise when there is none."""
    disposition = getattr(av.stream, "Disposition", None)  # PyAV < 13 has no Disposition flags
    for stream in container.streams.video:
        if disposition is None or not stream.disposition & disposition.attached_pic:
            return stream
    kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
    raise NoVideoStreamError(path, f"no video stream in the file (found: {', '.join(kinds)})")


def _probe_open_container(
    path: str, container: av.container.InputContainer, file_size: int
) -> VideoInfo:
    stream = first_video_stream(path, container)
    if stream.codec_context is None:
        raise UnsupportedCodecError(path, "FFmpeg has no decoder for the video stream")
    codec = stream.codec_context.name
    _check_index_within_file(path, container, stream, file_size)

    first_frame = _decode_first_frame(path, container, stream)
    rotation = _rotation_of(stream, first_frame)
    pix_fmt = first_frame.format.name
    width = stream.codec_context.width or first_frame.width
    height = stream.codec_context.height or first_frame.height

    time_base = stream.time_base or Fraction(1, 1_000_000)
    declared_duration = _declared_duration_s(container, stream)
    rate = _declared_fps(stream)
    declared_frames = stream.frames if stream.frames and stream.frames > 0 else None

    scan = None
    if declared_frames is not None and declared_duration is not None:
        scan = _scan_tail(container, stream, declared_duration)
    full_scan = None
    if scan is None:
        full_scan = scan = _scan_all_packets(path, stream.index)
        declared_frames = None
    if scan.end_pts is None or scan.video_packets == 0:
        raise CorruptVideoError(path, "the video stream has no packets with timestamps")

    start_pts = stream.start_time if stream.start_time is not None else scan.first_pts
    if start_pts is None:
        start_pts = 0
    duration_s = float((scan.end_pts - start_pts) * time_base)
    if duration_s <= 0:
        duration_s = float(1 / rate) if rate else 0.0

    frame_count = declared_frames
    if frame_count is not None and rate and not _consistent(frame_count, duration_s * rate):
        logger.info(
            "%s: declared frame count %d disagrees with %.3f s at %.3f fps; counting packets",
            path,
            frame_count,
            duration_s,
            rate,
        )
        frame_count = None
    if frame_count is None:
        if full_scan is None:
            full_scan = scan = _scan_all_packets(path, stream.index)
        frame_count = full_scan.video_packets

    if declared_duration is not None and abs(declared_duration - duration_s) > 0.5:
        logger.info(
            "%s: header declares %.3f s but the packets end at %.3f s; using the packets",
            path,
            declared_duration,
            duration_s,
        )
    _check_packets_cover_file(path, scan, declared_duration, duration_s, file_size)

    # A variable-frame-rate stream often declares a nominal rate; the measured one wins then.
    measured_fps = frame_count / duration_s if duration_s > 0 else 0.0
    fps = float(rate) if rate and _consistent(frame_count, duration_s * rate) else measured_fps
    return VideoInfo(
        path=path,
        duration_s=duration_s,
        fps=fps,
        frame_count=frame_count,
        width=int(width),
        height=int(height),
        codec=codec,
        pix_fmt=pix_fmt,
        rotation=rotation,
        has_audio=any(s.type == "audio" for s in container.streams),
        container=container.format.name,
        start_s=float(start_pts * time_base),
    )


def _consistent(declared: int, expected: float) -> bool:
    return abs(declared - expected) <= 0.1 * expected + 2


def _declared_duration_s(
    container: av.container.InputContainer, stream: av.VideoStream
) -> float | None:
    if stream.duration is not None and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _declared_fps(stream: av.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _check_index_within_file(
    path: str, container: av.container.InputContainer, stream: av.VideoStream, file_size: int
) -> None:
    """Raise TruncatedVideoError when an MP4/MOV index points past the end of the file."""
    if not any(name in container.format.name.split(",") for name in INDEXED_CONTAINERS):
        return
    entries = getattr(stream, "index_entries", None)  # added in recent PyAV releases
    count = len(entries) if entries is not None else 0
    if count == 0:
        return
    # The last entries hold the largest offsets; 16 of them cover interleaving with audio.
    last_end = max(entries[i].pos + entries[i].size for i in range(max(0, count - 16), count))
    if last_end > file_size:
        raise TruncatedVideoError(
            path,
            f"the MP4 index refers to byte {last_end} but the file has only {file_size} bytes; "
            "the file is truncated",
        )


def _decode_first_frame(
    path: str, container: av.container.InputContainer, stream: av.VideoStream
) -> av.VideoFrame:
    failures = 0
    last_error: Exception | None = None
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as error:
                failures += 1
                last_error = error
                if failures >= MAX_UNDECODABLE_PACKETS:
                    break
                continue
            if frames:
                return frames[0]
    except av.error.DecoderNotFoundError as error:
        codec = stream.codec_context.name
        raise UnsupportedCodecError(path, f"no decoder for codec {codec}") from error
    except av.error.FFmpegError as error:
        last_error = error
    detail = f" (last error: {last_error})" if last_error is not None else ""
    raise CorruptVideoError(path, f"no frame of the video stream could be decoded{detail}")


def _rotation_of(stream: av.VideoStream, frame: av.VideoFrame) -> int:
    """Return the counter-clockwise rotation from the display matrix or the legacy tag."""
    # NOTE: VideoFrame.rotation exists in recent PyAV releases (18.1 is tested here); with an
    # older PyAV only the legacy tag below is read.
    angle = getattr(frame, "rotation", 0) or 0
    if not angle:
        # The legacy "rotate" tag counts degrees clockwise, the opposite of the display matrix.
        tag = stream.metadata.get("rotate")
        try:
            angle = -float(tag) if tag is not None else 0
        except ValueError:
            logger.warning("ignoring the unreadable rotate tag %r", tag)
            angle = 0
    return int(round(angle / 90.0)) * 90 % 360


def _scan_tail(
    container: av.container.InputContainer, stream: av.VideoStream, declared_duration: float
) -> _PacketScan | None:
    """Demux from the key frame before the declared end to the end of the file."""
    start_pts = stream.start_time or 0
    target = start_pts + int(declared_duration / stream.time_base)
    try:
        container.seek(target, backward=True, any_frame=False, stream=stream)
    except av.error.FFmpegError as error:
        logger.debug("seeking to the declared end failed (%s); counting all packets", error)
        return None
    scan = _scan_packets(container, stream)
    return scan if scan.video_packets else None


def _scan_all_packets(path: str, stream_index: int) -> _PacketScan:
    """Demux every packet of a freshly opened copy of the file."""
    container = open_container(path)
    try:
        return _scan_packets(container, container.streams[stream_index])
    finally:
        container.close()


def _scan_packets(container: av.container.InputContainer, stream: av.VideoStream) -> _PacketScan:
    """Demux packets of every stream from the current position to the end of the file."""
    scan = _PacketScan()
    try:
        for packet in container.demux():
            if packet.pos is not None and packet.pos >= 0:
                scan.last_byte = max(scan.last_byte, packet.pos + packet.size)
            if packet.stream.index != stream.index or packet.size == 0:
                continue
            scan.video_packets += 1
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                continue
            end = pts + (packet.duration or 0)
            scan.first_pts = pts if scan.first_pts is None else min(scan.first_pts, pts)
            scan.last_pts = pts if scan.last_pts is None else max(scan.last_pts, pts)
            scan.end_pts = end if scan.end_pts is None else max(scan.end_pts, end)
    except av.error.FFmpegError as error:
        scan.error = str(error)
    return scan


def _check_packets_cover_file(
    path: str,
    scan: _PacketScan,
    declared_duration: float | None,
    duration_s: float,
    file_size: int,
) -> None:
    """Raise CorruptVideoError when demuxing stops early inside a file with more data.

    A header duration that is far longer than the packets, together with packets that end
    before half of the file's bytes, means the demuxer lost its way in damaged data. A header
    that is merely wrong has packets reaching (almost) to the end of the file.
    """
    if scan.error is not None and scan.last_byte < file_size // 2:
        raise CorruptVideoError(
            path, f"demuxing failed at byte {scan.last_byte} of {file_size}: {scan.error}"
        )
    if declared_duration is None or declared_duration <= 2 * duration_s + 1.0:
        return
    if scan.last_byte and scan.last_byte < file_size // 2:
        raise CorruptVideoError(
            path,
            f"packets stop at {duration_s:.2f} s and byte {scan.last_byte} of {file_size}, "
            f"although the header declares {declared_duration:.2f} s; the data is damaged",
        )


def describe(info: VideoInfo) -> str:
    """Return a one-line summary of ``info`` for logs and the CLI."""
    name = Path(info.path).name
    return (
        f"{name}: {info.codec} {info.width}x{info.height} {info.pix_fmt}, {info.fps:.3f} fps, "
        f"{info.frame_count} frames, {info.duration_s:.3f} s, rotation {info.rotation}"
    )
