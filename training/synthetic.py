"""Seeded synthetic captioned videos for CPU-sized training and evaluation.

Each clip is a sequence of short scenes. A scene shows one object, of a colour and a shape, on a
dark background, moving in one of four directions or standing still. Exactly one scene per clip is
salient: its object is large and always moves, and the scene is the longest. The other scenes
show small objects of a different colour and a different shape. Every caption describes only the
salient scene ("a big red circle moves to the left"). So a plain average over all frames mixes the
salient object with the distractors, and the average of frames cannot tell the direction of
motion, because moving left and moving right visit the same positions. A video vector that weighs
frames by content and reads their order can do better. With ``trail`` set, each moving object
leaves a fading trail behind it, so that a single frame shows its direction.

Output layout, the MSR-VTT JSON-lines form read by ``training.datasets.read_caption_jsonl``::

    OUT/videos/synth-train-00000.mp4 ...   H.264, yuv420p, SIZE x SIZE, FPS frames per second
    OUT/train.jsonl                        {"video_id": ..., "caption": ...} per caption
    OUT/test.jsonl
    OUT/scenes.json                        generator settings and every clip's scene list

Every clip is drawn from its own random stream, ``numpy.random.default_rng([seed, split, index])``,
so the output depends only on the settings, not on the number of worker processes. Test clips
take distinct (colour, shape, direction) combinations for their salient scene while there are
enough of them, so a test caption usually matches one video only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 40),
    "purple": (160, 60, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit step (dx, dy) in image coordinates
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}

_DIRECTION_PHRASES = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "towards the top"),
    "down": ("down", "downwards", "towards the bottom"),
}
_SIZE_WORDS = ("big", "large", "huge")
_CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} moves {direction}",
    "the {colour} {shape} slides {direction}",
    "{colour} {shape} moving {direction}",
    "a {size} {colour} {shape} travels {direction}",
    "there is a {colour} {shape} drifting {direction}",
    "video of a {size} {colour} {shape} going {direction}",
    "a {colour} {shape} that moves {direction}",
    "the {size} {shape}, {colour}, heads {direction}",
)
_BACKGROUND = np.array([28, 28, 32], dtype=np.float32)
_TRAIL_SPACING = 0.6  # distance between trail copies, as a fraction of the object's half-size
_SPLIT_CODES = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Settings of one generated benchmark; the same settings give the same files."""

    num_train: int = 200  # training clips
    num_test: int = 96  # test clips; up to 96 get distinct salient combinations
    seed: int = 0  # root of every clip's random stream
    size: int = 64  # frame width and height in pixels
    fps: int = 8  # frames per second
    min_seconds: float = 3.0  # minimum clip duration
    max_seconds: float = 4.0  # maximum clip duration
    num_scenes: int = 3  # scenes per clip, one of them salient
    train_captions: int = 4  # captions per training clip
    test_captions: int = 1  # captions per test clip, one as in MSR-VTT 1k-A
    noise_std: float = 4.0  # per-pixel Gaussian noise, in 8-bit levels
    trail: int = 0  # fading copies drawn behind a moving object, so that one frame shows its direction


@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene of a clip."""

    colour: str  # key of COLOURS
    shape: str  # one of SHAPES
    direction: str | None  # key of DIRECTIONS, None for a still object
    radius: float  # object half-size in pixels
    num_frames: int  # scene length in frames
    salient: bool  # True for the scene the captions describe


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render and caption one clip."""

    video_id: str  # file stem and JSON-lines id
    split: str  # "train" or "test"
    scenes: tuple[Scene, ...]  # in playback order
    captions: tuple[str, ...]  # descriptions of the salient scene
    start_points: tuple[tuple[float, float], ...]  # object centre at each scene's first frame


def salient_combinations() -> list[tuple[str, str, str]]:
    """Return every (colour, shape, direction) combination, in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def make_caption(rng: np.random.Generator, colour: str, shape: str, direction: str) -> str:
    template = _CAPTION_TEMPLATES[rng.integers(len(_CAPTION_TEMPLATES))]
    phrases = _DIRECTION_PHRASES[direction]
    return template.format(
        size=_SIZE_WORDS[rng.integers(len(_SIZE_WORDS))],
        colour=colour,
        shape=shape,
        direction=phrases[rng.integers(len(phrases))],
    )


def _split_frames(rng: np.random.Generator, total: int, num_scenes: int, salient_index: int) -> list[int]:
    """Split ``total`` frames into scenes, the salient one strictly the longest."""
    salient_length = int(round(total * rng.uniform(0.42, 0.5)))
    rest = total - salient_length
    others = num_scenes - 1
    lengths = [rest // others + (1 if i < rest % others else 0) for i in range(others)]
    lengths.insert(salient_index, salient_length)
    return lengths


def plan_clip(config: SyntheticConfig, split: str, index: int, salient: tuple[str, str, str]) -> ClipSpec:
    """Draw the scenes, positions and captions of one clip from its own random stream."""
    rng = np.random.default_rng([config.seed, _SPLIT_CODES[split], index])
    colour, shape, direction = salient
    total_frames = int(round(rng.uniform(config.min_seconds, config.max_seconds) * config.fps))
    salient_index = int(rng.integers(config.num_scenes))
    lengths = _split_frames(rng, total_frames, config.num_scenes, salient_index)

    other_colours = [name for name in COLOURS if name != colour]
    other_shapes = [name for name in SHAPES if name != shape]
    scenes: list[Scene] = []
    starts: list[tuple[float, float]] = []
    for position, num_frames in enumerate(lengths):
        if position == salient_index:
            scene = Scene(colour, shape, direction, config.size * rng.uniform(0.22, 0.27), num_frames, True)
        else:
            moving = rng.random() < 0.5
            scene = Scene(
                colour=other_colours[rng.integers(len(other_colours))],
                shape=other_shapes[rng.integers(len(other_shapes))],
                direction=list(DIRECTIONS)[rng.integers(len(DIRECTIONS))] if moving else None,
                radius=config.size * rng.uniform(0.08, 0.12),
                num_frames=num_frames,
                salient=False,
            )
        scenes.append(scene)
        starts.append(_start_point(rng, config.size, scene))

    count = config.train_captions if split == "train" else config.test_captions
    captions: list[str] = []
    for _ in range(count * 20):  # redraw duplicates, with a bound in case count exceeds the variety
        caption = make_caption(rng, colour, shape, direction)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    captions = captions + captions[: count - len(captions)]
    return ClipSpec(f"synth-{split}-{index:05d}", split, tuple(scenes), tuple(captions), tuple(starts))


def _travel(size: int, scene: Scene) -> float:
    """Distance in pixels the object covers over its scene."""
    return 0.0 if scene.direction is None else 0.4 * size


def _start_point(rng: np.random.Generator, size: int, scene: Scene) -> tuple[float, float]:
    """Pick a start so that the whole path stays inside the frame."""
    dx, dy = DIRECTIONS[scene.direction] if scene.direction else (0.0, 0.0)
    travel = _travel(size, scene)
    margin = scene.radius + 1.0
    low_x, high_x = margin - min(dx, 0.0) * travel, size - margin - max(dx, 0.0) * travel
    low_y, high_y = margin - min(dy, 0.0) * travel, size - margin - max(dy, 0.0) * travel
    return float(rng.uniform(low_x, high_x)), float(rng.uniform(low_y, high_y))


def _shape_mask(shape: str, grid_x: np.ndarray, grid_y: np.ndarray, centre: tuple[float, float], radius: float) -> np.ndarray:
    dx = grid_x - centre[0]
    dy = grid_y - centre[1]
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= radius * 0.85
    if shape == "triangle":
        # Apex up: the half-width grows linearly from 0 at the top to ``radius`` at the base.
        height_fraction = (dy + radius) / (2.0 * radius)
        return (height_fraction >= 0.0) & (height_fraction <= 1.0) & (np.abs(dx) <= radius * height_fraction)
    if shape == "cross":
        bar = radius / 3.0
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_clip(config: SyntheticConfig, spec: ClipSpec) -> np.ndarray:
    """Render a clip as uint8 RGB frames [F, SIZE, SIZE, 3]."""
    rng = np.random.default_rng([config.seed, _SPLIT_CODES[spec.split], int(spec.video_id[-5:]), 1])
    grid_y, grid_x = np.mgrid[0 : config.size, 0 : config.size].astype(np.float32) + 0.5
    frames: list[np.ndarray] = []
    for scene, start in zip(spec.scenes, spec.start_points):
        dx, dy = DIRECTIONS[scene.direction] if scene.direction else (0.0, 0.0)
        travel = _travel(config.size, scene)
        colour = np.array(COLOURS[scene.colour], dtype=np.float32)
        for step in range(scene.num_frames):
            progress = step / max(scene.num_frames - 1, 1)
            centre = (start[0] + dx * travel * progress, start[1] + dy * travel * progress)
            frame = np.broadcast_to(_BACKGROUND, (config.size, config.size, 3)).copy()
            # The farthest copy is drawn first, so nearer, brighter copies and the object cover it.
            for echo in range(config.trail if scene.direction else 0, 0, -1):
                offset = echo * _TRAIL_SPACING * scene.radius
                behind = (centre[0] - dx * offset, centre[1] - dy * offset)
                weight = 0.5**echo
                mask = _shape_mask(scene.shape, grid_x, grid_y, behind, scene.radius)
                frame[mask] = weight * colour + (1.0 - weight) * _BACKGROUND
            frame[_shape_mask(scene.shape, grid_x, grid_y, centre, scene.radius)] = colour
            if config.noise_std > 0:
                frame += rng.normal(0.0, config.noise_std, size=frame.shape).astype(np.float32)
            frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)  # [F, SIZE, SIZE, 3]


def encode_frames_h264(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode RGB frames [F, H, W, 3] to an H.264 yuv420p MP4 with ffmpeg, bit-exact."""
    if shutil.which("ffmpeg") is None:
        raise FileNotFoundError("ffmpeg not found on PATH; install ffmpeg to generate synthetic videos")
    height, width = frames.shape[1:3]
    command = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-threads", "1", "-g", str(fps), "-map_metadata", "-1",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", str(path),
    ]
    result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed to encode {path}: {result.stderr.decode(errors='replace').strip()}")


def _render_and_encode(job: tuple[SyntheticConfig, ClipSpec, Path]) -> str:
    config, spec, path = job
    encode_frames_h264(render_clip(config, spec), path, config.fps)
    return spec.video_id


def plan_dataset(config: SyntheticConfig) -> list[ClipSpec]:
    """Plan every clip of both splits; test clips first take distinct salient combinations."""
    combinations = salient_combinations()
    specs: list[ClipSpec] = []

    train_rng = np.random.default_rng([config.seed, _SPLIT_CODES["train"]])
    for index in range(config.num_train):
        salient = combinations[train_rng.integers(len(combinations))]
        specs.append(plan_clip(config, "train", index, salient))

    test_rng = np.random.default_rng([config.seed, _SPLIT_CODES["test"]])
    order: list[int] = []
    while len(order) < config.num_test:
        order.extend(test_rng.permutation(len(combinations)).tolist())
    for index in range(config.num_test):
        specs.append(plan_clip(config, "test", index, combinations[order[index]]))
    return specs


def _scene_record(scene: Scene) -> dict[str, object]:
    return dataclasses.asdict(scene)


def generate_dataset(out_dir: Path | str, config: SyntheticConfig, workers: int = 1) -> dict[str, Path]:
    """Render, encode and caption both splits under ``out_dir``; returns the JSON-lines paths.

    Existing files of the same names are overwritten.
    """
    if config.num_scenes < 2:
        raise ValueError(f"num_scenes must be at least 2 so that clips have distractors, got {config.num_scenes}")
    if config.num_train < 1 or config.num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {config.num_train} and {config.num_test}")
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_dataset(config)

    jobs = [(config, spec, video_dir / f"{spec.video_id}.mp4") for spec in specs]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_render_and_encode, jobs, chunksize=8):
                pass
    else:
        for job in jobs:
            _render_and_encode(job)

    paths: dict[str, Path] = {}
    for split in ("train", "test"):
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for spec in specs:
                if spec.split != split:
                    continue
                for caption in spec.captions:
                    handle.write(json.dumps({"video_id": spec.video_id, "caption": caption}) + "\n")
        paths[split] = path

    manifest = {
        "generator": "training.synthetic",
        "config": dataclasses.asdict(config),
        "clips": [
            {"video_id": spec.video_id, "split": spec.split, "scenes": [_scene_record(s) for s in spec.scenes]}
            for spec in specs
        ],
    }
    (out_dir / "scenes.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    logger.info("wrote %d train and %d test clips to %s", config.num_train, config.num_test, out_dir)
    return paths
