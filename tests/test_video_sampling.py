"""Segment splitting and frame-time sampling against simple oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.video import sample_times, segment_bounds


def oracle_segment_count(duration_s: float, segment_seconds: float) -> int:
    """Return the smallest count of equal segments that are each at most segment_seconds."""
    count = 1
    while duration_s / count > segment_seconds + 1e-9:
        count += 1
    return count


@pytest.mark.parametrize(
    "duration_s",
    [0.1, 1.0, 9.99, 10.0, 10.01, 14.9, 15.0, 15.1, 20.0, 25.0, 29.999, 30.0, 61.5, 3600.0],
)
@pytest.mark.parametrize("segment_seconds", [10.0, 7.5])
def test_segment_bounds_match_oracle(duration_s: float, segment_seconds: float) -> None:
    bounds = segment_bounds(duration_s, segment_seconds)

    assert len(bounds) == oracle_segment_count(duration_s, segment_seconds)
    assert bounds[0][0] == 0.0
    assert bounds[-1][1] == duration_s
    lengths = [end - start for start, end in bounds]
    assert max(lengths) - min(lengths) < 1e-6
    assert max(lengths) <= segment_seconds + 1e-9
    if len(bounds) > 1:
        assert min(lengths) > segment_seconds / 2
    for (_, previous_end), (next_start, _) in zip(bounds, bounds[1:]):
        assert next_start == pytest.approx(previous_end)


def test_segment_bounds_short_video_is_one_segment() -> None:
    assert segment_bounds(4.0, 10.0) == [(0.0, 4.0)]


def test_segment_bounds_example_tail_is_spread() -> None:
    bounds = segment_bounds(25.0, 10.0)

    assert len(bounds) == 3
    assert bounds[1] == pytest.approx((25 / 3, 50 / 3))


def test_segment_bounds_zero_duration() -> None:
    assert segment_bounds(0.0, 10.0) == [(0.0, 0.0)]


@pytest.mark.parametrize(
    ("duration_s", "segment_seconds"),
    [(-1.0, 10.0), (math.nan, 10.0), (math.inf, 10.0), (10.0, 0.0), (10.0, -5.0), (10.0, math.nan)],
)
def test_segment_bounds_rejects_invalid(duration_s: float, segment_seconds: float) -> None:
    with pytest.raises(ValueError):
        segment_bounds(duration_s, segment_seconds)


@pytest.mark.parametrize(
    ("start_s", "end_s", "num_frames"), [(0.0, 1.0, 4), (2.5, 12.5, 12), (3.0, 3.3, 1)]
)
def test_sample_times_are_bin_middles(start_s: float, end_s: float, num_frames: int) -> None:
    times = sample_times(start_s, end_s, num_frames)

    width = (end_s - start_s) / num_frames
    expected = [start_s + width * (i + 0.5) for i in range(num_frames)]
    assert times == pytest.approx(expected)
    assert all(isinstance(t, float) for t in times)


def test_sample_times_jitter_stays_in_bins() -> None:
    rng = np.random.default_rng(7)
    start_s, end_s, num_frames = 1.0, 9.0, 8
    width = (end_s - start_s) / num_frames

    for _ in range(200):
        times = sample_times(start_s, end_s, num_frames, jitter=True, rng=rng)
        assert len(times) == num_frames
        for i, t in enumerate(times):
            assert start_s + i * width <= t < start_s + (i + 1) * width


def test_sample_times_jitter_covers_bins() -> None:
    rng = np.random.default_rng(3)
    draws = np.array([sample_times(0.0, 4.0, 4, jitter=True, rng=rng) for _ in range(500)])
    offsets = draws - np.arange(4)  # position inside each 1 s bin, [500, 4]

    assert offsets.min() < 0.05
    assert offsets.max() > 0.95
    assert abs(offsets.mean() - 0.5) < 0.05


def test_sample_times_jitter_reproducible_with_seed() -> None:
    first = sample_times(0.0, 10.0, 6, jitter=True, rng=np.random.default_rng(11))
    second = sample_times(0.0, 10.0, 6, jitter=True, rng=np.random.default_rng(11))
    other = sample_times(0.0, 10.0, 6, jitter=True, rng=np.random.default_rng(12))

    assert first == second
    assert first != other


def test_sample_times_empty_segment_repeats_start() -> None:
    assert sample_times(2.0, 2.0, 3) == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ((0.0, 1.0, 0), ValueError),
        ((0.0, 1.0, -2), ValueError),
        ((0.0, 1.0, 2.0), TypeError),
        ((0.0, 1.0, True), TypeError),
        ((1.0, 0.5, 4), ValueError),
        ((-0.5, 1.0, 4), ValueError),
        ((0.0, math.nan, 4), ValueError),
        ((math.inf, math.inf, 4), ValueError),
    ],
)
def test_sample_times_rejects_invalid(arguments: tuple, error: type[Exception]) -> None:
    with pytest.raises(error):
        sample_times(*arguments)


def test_sample_times_rejects_legacy_random_state() -> None:
    with pytest.raises(TypeError, match="default_rng"):
        sample_times(0.0, 1.0, 4, jitter=True, rng=np.random.RandomState(0))
