"""Run the containers' entry commands directly, with the compose file's environment.

No Docker engine runs here, so each service's command (the image's ENTRYPOINT plus the compose
``command``) runs on this machine instead, in the environment the container would get:
``.env.example`` as the ``.env`` file, then the service's ``environment``. Container paths are
remapped to temporary folders. Two values change for this machine. The model is the
repository's demo checkpoint, or ``pig-tiny`` until that exists. The search service listens on
127.0.0.1 and a free port instead of 0.0.0.0:8000.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.index_store import Catalog

from test_deploy_support import (
    ENV_EXAMPLE,
    REPO_ROOT,
    exec_form,
    interpolate,
    load_compose,
    parse_dockerfile,
    read_env_file,
    service_environment,
)

pytestmark = pytest.mark.slow

DEMO_CHECKPOINT = REPO_ROOT / "checkpoints" / "demo"
# Three clips that differ in content, one with a space in its name.
CLIPS = {
    "test pattern.mp4": "testsrc=size=64x64:rate=10",
    "red.mp4": "color=c=red:size=64x64:rate=10",
    "mandelbrot.mp4": "mandelbrot=size=64x64:rate=10",
}
# Requests to /readyz, 0.5 s apart, before the test fails for want of a 200 response.
READY_ATTEMPTS = 240


@dataclass
class Container:
    """A service's command and environment, with container paths mapped to host paths."""

    command: list[str]
    environment: dict[str, str]
    paths: dict[str, Path]


def make_clip(path: Path, source: str) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("ffmpeg is not installed; the deployment run tests need it to make videos")
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source, "-t", "2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def remap(value: str, paths: dict[str, Path]) -> str:
    """Replace a leading container path in a value with its host path."""
    for target in sorted(paths, key=len, reverse=True):
        if value == target or value.startswith(target + "/"):
            return str(paths[target]) + value[len(target):]
    return value


def container_for(service_name: str, scratch: Path) -> Container:
    """Build the command, environment and path map that a compose service's container gets."""
    service = interpolate(load_compose(), {})["services"][service_name]
    dockerfile = parse_dockerfile(REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"])
    entrypoint = exec_form(dockerfile.final.all("ENTRYPOINT")[0].arguments)
    default_command = [exec_form(item.arguments) for item in dockerfile.final.all("CMD")]
    command = entrypoint + service.get("command", default_command[0] if default_command else [])

    paths: dict[str, Path] = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            paths[target] = scratch / source  # A named volume becomes a folder.
        elif (REPO_ROOT / volume["source"]).exists():
            paths[volume["target"]] = REPO_ROOT / volume["source"]
        else:
            paths[volume["target"]] = scratch / Path(volume["source"]).name

    assigned, _ = read_env_file(ENV_EXAMPLE)
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("PIG_", "HF_"))}
    environment.update(assigned)
    environment.update(service_environment(service))
    environment = {name: remap(value, paths) for name, value in environment.items()}
    environment["HF_HUB_OFFLINE"] = "1"

    executable = Path(sys.executable).parent / command[0]
    command = [str(executable)] + [remap(argument, paths) for argument in command[1:]]
    return Container(command=command, environment=environment, paths=paths)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def ingested(scratch: Path) -> Container:
    """Run the indexer-cpu service's command on three clips; return that container."""
    indexer = container_for("indexer-cpu", scratch)
    videos = indexer.paths["/videos"]
    videos.mkdir(parents=True)
    for name, source in CLIPS.items():
        make_clip(videos / name, source)
    if not DEMO_CHECKPOINT.joinpath("config.json").is_file():
        indexer.environment["PIG_CHECKPOINT"] = ""
        indexer.environment["PIG_MODEL"] = "pig-tiny"
    # One decode worker: the machines that run this suite have two cores.
    indexer.environment["PIG_WORKERS"] = "1"

    result = subprocess.run(indexer.command + ["--no-progress"], env=indexer.environment,
                            capture_output=True, text=True, check=False)

    assert result.returncode == 0, f"{indexer.command} failed:\n{result.stdout}\n{result.stderr}"
    return indexer


@pytest.fixture(scope="module")
def api(scratch: Path, ingested: Container) -> Iterator[tuple[Container, str]]:
    """Start the api service's command against the index; yield it and its base URL."""
    container = container_for("api", scratch)
    assert container.environment["PIG_HOST"] == "0.0.0.0"
    container.environment["PIG_HOST"] = "127.0.0.1"
    container.environment["PIG_PORT"] = str(free_port())
    base_url = f"http://127.0.0.1:{container.environment['PIG_PORT']}"

    log_path = scratch / "search-api.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(container.command, env=container.environment,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(READY_ATTEMPTS):
            if process.poll() is not None:
                pytest.fail(f"search-api exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"search-api never became ready:\n{log_path.read_text()}")
        yield container, base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_indexer_writes_index(ingested: Container):
    index_dir = Path(ingested.environment["PIG_INDEX_DIR"])

    assert index_dir == ingested.paths["/data/index"]
    assert (index_dir / "catalog.sqlite").is_file()
    assert (index_dir / "CURRENT").is_file()
    assert (index_dir / "model" / "config.json").is_file()
    catalog = Catalog(index_dir / "catalog.sqlite")
    try:
        assert catalog.count_indexed_videos() == len(CLIPS)
    finally:
        catalog.close()


def test_indexer_default_command_runs(ingested: Container):
    # The image's CMD, `indexer status`, with the same environment.
    status_command = ingested.command[:1] + ["status"]

    result = subprocess.run(status_command, env=ingested.environment, capture_output=True,
                            text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert f"indexed {len(CLIPS)}," in result.stdout


def test_indexer_rerun_reuses_index_model(ingested: Container):
    # With no model set, a later ingest loads the copy in INDEX_DIR/model, as .env.example documents.
    environment = {**ingested.environment, "PIG_CHECKPOINT": "", "PIG_MODEL": ""}

    result = subprocess.run(ingested.command + ["--no-progress"], env=environment,
                            capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert f"skipped {len(CLIPS)} unchanged" in result.stdout
    verify = subprocess.run(ingested.command[:1] + ["verify"], env=environment,
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_api_ready_on_index(api: tuple[Container, str]):
    _, base_url = api

    response = httpx.get(f"{base_url}/readyz", timeout=10)

    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["vector_count"] >= len(CLIPS)


def test_api_search_returns_clips(api: tuple[Container, str]):
    container, base_url = api
    videos = container.paths["/videos"]

    response = httpx.post(f"{base_url}/search", json={"query": "a red screen", "top_k": 10},
                          timeout=60)

    assert response.status_code == 200, response.text
    paths = sorted(Path(hit["path"]).name for hit in response.json()["results"])
    assert paths == sorted(CLIPS)
    for hit in response.json()["results"]:
        assert Path(hit["path"]).parent == videos


def test_api_metrics_served(api: tuple[Container, str]):
    _, base_url = api

    response = httpx.get(f"{base_url}/metrics", timeout=10)

    assert response.status_code == 200
    assert "# TYPE" in response.text


def test_healthcheck_passes_on_ready_api(api: tuple[Container, str]):
    container, _ = api
    script = REPO_ROOT / "docker" / "healthcheck.py"

    result = subprocess.run([sys.executable, str(script)],
                            env={"PIG_PORT": container.environment["PIG_PORT"]},
                            capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr


def test_api_settings_from_compose_env(ingested: Container, scratch: Path):
    # The settings `search-api` builds from the api container's environment plus a PIG_API_KEY
    # from .env: the index volume, the model copy inside it, and the key.
    container = container_for("api", scratch)
    environment = {**container.environment, "PIG_API_KEY": "deploy-test-key"}
    code = ("from search_api.cli import build_parser, settings_from_args; "
            "s = settings_from_args(build_parser().parse_args([])); "
            "print(s.index_dir, s.model_dir, s.api_key.get_secret_value())")

    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                            text=True, check=False)

    assert result.returncode == 0, result.stderr
    index_dir, model_dir, key = result.stdout.split()
    assert Path(index_dir) == ingested.paths["/data/index"].resolve()
    assert Path(model_dir) == ingested.paths["/data/index"].resolve() / "model"
    assert key == "deploy-test-key"
