"""Torch datasets that decode frames for training and evaluation, and the optional frame cache.

Determinism does not depend on the worker count: the sampler yields ``(epoch, video index)``
pairs, and each item draws its caption and its jittered frame times from
``numpy.random.default_rng([seed, epoch, video index])``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from shared.video import decode_frames, probe, sample_times
from training.datasets import CaptionDataset

logger = logging.getLogger(__name__)


class FrameCache:
    """Every video of a dataset decoded once at ``fps`` into one uint8 array on disk.

    ``frames.npy`` is [V, F, S, S, 3] with F the longest video's grid length (shorter videos
    repeat their last frame), and ``index.json`` stores each video's frame count and a key
    of the inputs. A cached clip samples the grid frame nearest to each requested time, so
    jittered training times are rounded to the grid, which is the difference from decoding
    directly.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index = json.loads((self.directory / "index.json").read_text())
        self.fps = float(index["fps"])
        self.counts = np.asarray(index["counts"], dtype=np.int64)
        self.durations = np.asarray(index["durations"], dtype=np.float64)
        self._frames: np.ndarray | None = None

    @property
    def frames(self) -> np.ndarray:
        # Opened lazily, so each DataLoader worker maps the file itself.
        if self._frames is None:
            self._frames = np.load(self.directory / "frames.npy", mmap_mode="r")
        return self._frames

    def sample(self, video_index: int, times: list[float]) -> np.ndarray:
        """Return the cached frames nearest to ``times``: [T, S, S, 3]."""
        count = int(self.counts[video_index])
        positions = np.clip(np.floor(np.asarray(times) * self.fps).astype(np.int64), 0, count - 1)
        return np.asarray(self.frames[video_index, positions])

    @staticmethod
    def key(dataset: CaptionDataset, size: int, fps: float) -> str:
        """Return a hash of the video files (path, size, mtime) and the grid settings."""
        digest = hashlib.sha256(f"{size}:{fps}".encode())
        for video in dataset.videos:
            stat = os.stat(video.path)
            digest.update(f"{video.path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def build(
        cls, root: Path, name: str, dataset: CaptionDataset, size: int, fps: float, num_workers: int
    ) -> "FrameCache":
        """Open the cache ``root/<name>-<key>``, decoding every video into it first if needed.

        The key covers the video files and the grid settings, so runs with other data or sizes
        never share a cache folder, and runs with the same ones may share ``root``.
        """
        key = cls.key(dataset, size, fps)
        directory = Path(root) / f"{name}-{key}"
        index_path = directory / "index.json"
        if index_path.is_file() and json.loads(index_path.read_text()).get("key") == key:
            logger.debug("using frame cache %s", directory)
            return cls(directory)

        directory.mkdir(parents=True, exist_ok=True)
        logger.info("decoding %d videos into frame cache %s at %.1f fps", len(dataset), directory, fps)
        loader = DataLoader(
            _GridDecodeDataset(dataset, size, fps),
            batch_size=None,
            num_workers=num_workers,
            generator=_private_generator(),
        )
        grids = [grid for grid in loader]
        durations = [duration for _, duration in grids]
        counts = [frames.shape[0] for frames, _ in grids]
        longest = max(counts)
        array = np.lib.format.open_memmap(
            directory / "frames.npy.tmp", mode="w+", dtype=np.uint8, shape=(len(grids), longest, size, size, 3)
        )
        for position, (frames, _) in enumerate(grids):
            array[position, : frames.shape[0]] = frames
            array[position, frames.shape[0] :] = frames[-1]
        array.flush()
        del array
        os.replace(directory / "frames.npy.tmp", directory / "frames.npy")
        index = {"key": key, "fps": fps, "size": size, "counts": counts, "durations": durations}
        index_path.write_text(json.dumps(index))
        return cls(directory)


class _GridDecodeDataset(Dataset):
    """Decodes one whole video per item at a fixed frame rate, for the frame cache."""

    def __init__(self, dataset: CaptionDataset, size: int, fps: float) -> None:
        self.videos = dataset.videos
        self.size = size
        self.fps = fps

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[np.ndarray, float]:
        info = probe(self.videos[index].path)
        duration = float(info.duration_s)
        count = max(1, int(np.ceil(duration * self.fps)))
        times = [min((position + 0.5) / self.fps, duration) for position in range(count)]
        return decode_frames(self.videos[index].path, times, self.size, info=info), duration


class EpochSampler(Sampler):
    """Yields ``(epoch, video index)`` in a seeded per-epoch order, sharded across ranks.

    Every rank draws the same permutation, pads it to a multiple of ``world_size`` by wrapping
    around, and takes every ``world_size``-th item from ``rank``. ``start_batch`` skips batches
    already trained when resuming mid-epoch.
    """

    def __init__(
        self, num_videos: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = True
    ) -> None:
        self.num_videos = num_videos
        self.seed = seed
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _shard(self) -> list[int]:
        order = np.random.default_rng([self.seed, 7919, self.epoch]).permutation(self.num_videos).tolist()
        padded_length = -(-len(order) // self.world_size) * self.world_size
        order = (order * 2)[:padded_length] if padded_length > len(order) else order
        return order[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int:
        length = len(self._shard())
        return length // self.batch_size if self.drop_last else -(-length // self.batch_size)

    def __iter__(self):
        shard = self._shard()
        usable = self.batches_per_epoch() * self.batch_size
        for position in range(self.start_batch * self.batch_size, min(usable, len(shard))):
            yield (self.epoch, shard[position])

    def __len__(self) -> int:
        return max(0, min(self.batches_per_epoch() * self.batch_size, len(self._shard())) - self.start_batch * self.batch_size)


class TrainClips(Dataset):
    """Training items: jittered frames of a video and one of its captions, chosen per epoch."""

    def __init__(self, dataset: CaptionDataset, num_frames: int, size: int, seed: int, cache: FrameCache | None = None) -> None:
        self.videos = dataset.videos
        self.num_frames = num_frames
        self.size = size
        self.seed = seed
        self.cache = cache
        self._infos: dict[int, object] = {}  # probe results, memoised per worker process

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, item: tuple[int, int]) -> tuple[np.ndarray, str, int]:
        epoch, index = item
        rng = np.random.default_rng([self.seed, epoch, index])
        video = self.videos[index]
        caption = video.captions[int(rng.integers(len(video.captions)))]
        if self.cache is not None:
            times = sample_times(0.0, float(self.cache.durations[index]), self.num_frames, jitter=True, rng=rng)
            return self.cache.sample(index, times), caption, index
        if index not in self._infos:
            self._infos[index] = probe(video.path)
        info = self._infos[index]
        times = sample_times(0.0, float(info.duration_s), self.num_frames, jitter=True, rng=rng)
        return decode_frames(video.path, times, self.size, info=info), caption, index


class EvalClips(Dataset):
    """Evaluation items: frames at the middle of each of T equal bins, no jitter."""

    def __init__(self, dataset: CaptionDataset, num_frames: int, size: int, cache: FrameCache | None = None) -> None:
        self.videos = dataset.videos
        self.num_frames = num_frames
        self.size = size
        self.cache = cache

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if self.cache is not None:
            times = sample_times(0.0, float(self.cache.durations[index]), self.num_frames)
            return self.cache.sample(index, times), index
        video = self.videos[index]
        info = probe(video.path)
        times = sample_times(0.0, float(info.duration_s), self.num_frames)
        return decode_frames(video.path, times, self.size, info=info), index


@dataclass
class TrainBatch:
    """One collated training batch."""

    frames: torch.Tensor  # [B, T, S, S, 3] uint8
    captions: list[str]  # one caption per video
    indices: torch.Tensor  # [B] video indices into the dataset


def collate_train(items: list[tuple[np.ndarray, str, int]]) -> TrainBatch:
    frames = torch.from_numpy(np.stack([item[0] for item in items]))  # [B, T, S, S, 3]
    return TrainBatch(frames=frames, captions=[item[1] for item in items], indices=torch.tensor([item[2] for item in items]))


def collate_eval(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.from_numpy(np.stack([item[0] for item in items]))  # [B, T, S, S, 3]
    return frames, torch.tensor([item[1] for item in items])


def _private_generator() -> torch.Generator:
    """A fixed-seed generator for DataLoaders that shuffle nothing.

    A DataLoader without a generator draws its worker base seed from torch's global RNG, which
    would shift dropout in training depending on whether a cache was built or an evaluation ran.
    """
    generator = torch.Generator()
    generator.manual_seed(0)
    return generator


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from torch's per-worker seed."""
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_eval_loader(
    dataset: CaptionDataset, num_frames: int, size: int, batch_size: int, num_workers: int, cache: FrameCache | None = None
) -> DataLoader:
    return DataLoader(
        EvalClips(dataset, num_frames, size, cache),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        worker_init_fn=seed_worker,
        generator=_private_generator(),
    )
