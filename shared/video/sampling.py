"""Split a video into segments and choose the frame times sampled from each segment.

Times are seconds from the first frame of the video (see ``shared.video.probe``).
"""

from __future__ import annotations

import math

import numpy as np

# Relative slack when dividing a duration into segments, so that a duration of 30.000000001 s
# with 10 s segments still gives three segments and not four.
_SPLIT_TOLERANCE = 1e-9


def segment_bounds(duration_s: float, segment_seconds: float) -> list[tuple[float, float]]:
    """Split ``[0, duration_s]`` into equal segments no longer than ``segment_seconds``.

    The rule has no remainder: a video is cut into ``ceil(duration_s / segment_seconds)``
    segments of equal length ``duration_s / count``. Every segment is therefore at most
    ``segment_seconds`` long and longer than half of it, except that a video shorter than
    ``segment_seconds`` is one segment of its own length. For example 25 s with 10 s segments
    gives three segments of 8.33 s. A duration of 0 gives the single segment ``(0.0, 0.0)``.
    """
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
    if not math.isfinite(segment_seconds) or segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be a finite number > 0, got {segment_seconds!r}")

    count = max(1, math.ceil(duration_s / segment_seconds - _SPLIT_TOLERANCE))
    length = duration_s / count
    bounds = [(i * length, (i + 1) * length) for i in range(count)]
    # Pin the last end to the duration, so rounding never cuts off the final frame.
    bounds[-1] = (bounds[-1][0], float(duration_s))
    return bounds


def sample_times(
    start_s: float,
    end_s: float,
    num_frames: int,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
) -> list[float]:
    """Return ``num_frames`` increasing times that cover ``[start_s, end_s]`` uniformly.

    The segment is cut into ``num_frames`` equal bins. Without jitter (indexing, evaluation)
    each time is the middle of its bin, so the result is deterministic. With jitter (training)
    each time is drawn uniformly inside its bin from ``rng`` (a new unseeded generator when
    None). A segment with ``start_s == end_s`` returns ``num_frames`` copies of ``start_s``.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)):
        raise TypeError(f"num_frames must be an int, got {type(num_frames).__name__}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not math.isfinite(start_s) or not math.isfinite(end_s):
        raise ValueError(f"start_s and end_s must be finite, got {start_s!r} and {end_s!r}")
    if start_s < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    if end_s < start_s:
        raise ValueError(f"end_s ({end_s}) must not be smaller than start_s ({start_s})")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )

    bin_width = (end_s - start_s) / num_frames
    if jitter:
        generator = rng if rng is not None else np.random.default_rng()
        offsets = generator.random(num_frames)  # uniform in [0, 1)
    else:
        offsets = np.full(num_frames, 0.5)
    times = start_s + (np.arange(num_frames) + offsets) * bin_width
    return [float(t) for t in times]
