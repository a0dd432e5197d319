"""Settings validation, the launch commands and an empty index."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from pydantic import ValidationError

from search_api.app import create_app
from search_api.settings import ApiSettings
from shared.index_store import CATALOG_FILE, CURRENT_FILE, MODEL_DIR, SNAPSHOTS_DIR, Catalog
from shared.model import load_checkpoint, model_fingerprint

from test_search_api_support import (
    build_index,
    create_index,
    environment_without_pig,
    free_port,
    ingest,
    live_server,
    make_ffmpeg_clip,
    publish,
    tiny_model,
)

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("search_api_startup")
    clip = root / "videos" / "bars.mp4"
    make_ffmpeg_clip(clip, "smptebars=size=96x64:rate=10", 2)
    build_index(root / "index", tiny_model(), [clip])
    return root / "index"


def test_settings_missing_index_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValidationError) as error:
        ApiSettings(index_dir=missing)
    message = str(error.value)
    assert str(missing) in message
    assert "indexer ingest" in message


def test_settings_dir_without_catalog(tmp_path):
    with pytest.raises(ValidationError) as error:
        ApiSettings(index_dir=tmp_path)
    assert "no catalog.sqlite" in str(error.value)


def test_settings_missing_model_copy(small_index, tmp_path):
    with pytest.raises(ValidationError) as error:
        ApiSettings(index_dir=small_index, checkpoint=tmp_path)
    assert "config.json is missing" in str(error.value)


def test_settings_from_environment(small_index, monkeypatch):
    monkeypatch.setenv("PIG_INDEX_DIR", str(small_index))
    monkeypatch.setenv("PIG_MAX_TOP_K", "7")
    monkeypatch.setenv("PIG_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("PIG_API_KEY", "hidden-value")
    settings = ApiSettings()
    assert settings.index_dir == small_index.resolve()
    assert settings.model_dir == small_index.resolve() / "model"
    assert settings.max_top_k == 7
    assert settings.cors_origins == ["https://a.example"]
    assert settings.api_key.get_secret_value() == "hidden-value"
    assert "hidden-value" not in repr(settings)


def test_settings_invalid_device(small_index):
    with pytest.raises(ValidationError) as error:
        ApiSettings(index_dir=small_index, device="tpu")
    assert "'auto', 'cpu', 'cuda' or 'cuda:N'" in str(error.value)


def test_import_loads_no_model(tmp_path):
    code = (
        "import sys, search_api.app as m\n"
        "assert m.app.state.services is None\n"
        "assert m.app.state.settings is None\n"
        "print('ok')\n"
    )
    env = {**environment_without_pig(), "PIG_INDEX_DIR": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cli_reports_missing_index_dir(tmp_path):
    missing = tmp_path / "absent"
    result = subprocess.run(
        [str(VENV_BIN / "search-api"), "--index-dir", str(missing)],
        env=environment_without_pig(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "indexer ingest" in result.stderr


def wait_ready(base_url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base_url} did not become ready in {timeout_s} s")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["search-api", "uvicorn"])
def test_launch_commands_serve(small_index, launcher, tmp_path):
    port = free_port()
    env = environment_without_pig()
    if launcher == "search-api":
        command = [str(VENV_BIN / "search-api"), "--index-dir", str(small_index),
                   "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        env.update(PIG_FAISS_BLAS_THRESHOLD="5")
    else:
        env.update(PIG_INDEX_DIR=str(small_index), PIG_DEVICE="cpu")
        command = [str(VENV_BIN / "uvicorn"), "search_api.app:app",
                   "--host", "127.0.0.1", "--port", str(port)]
    # Logs go to a file: an unread pipe fills up with access-log lines and blocks the server.
    log_path = tmp_path / f"{launcher}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process, log_path)
        response = httpx.post(f"{base_url}/search", json={"query": "bars"}, timeout=30.0)
        assert response.status_code == 200
        assert len(response.json()["results"]) == 1
    finally:
        process.terminate()
        process.wait(timeout=60)
    stderr = log_path.read_text()
    assert "loaded model pig-tiny" in stderr
    assert "loaded index" in stderr
    threshold = "5" if launcher == "search-api" else "4"
    assert f"micro-batches of {threshold} or more queries with one BLAS product" in stderr
    assert "ModuleNotFoundError" not in stderr, "faiss's loader messages must stay quiet"


@pytest.mark.parametrize("published", [True, False])
def test_empty_index_returns_no_results(tmp_path, published):
    catalog = create_index(tmp_path / "index", tiny_model())
    if published:
        publish(tmp_path / "index", catalog)
    catalog.close()
    with live_server(tmp_path / "index") as server, server.client() as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/search", json={"query": "anything", "top_k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == []
    assert body["total_videos"] == 0


def test_torn_current_snapshot_falls_back_at_start(tmp_path):
    first = tmp_path / "videos" / "first.mp4"
    second = tmp_path / "videos" / "second.mp4"
    make_ffmpeg_clip(first, "testsrc=size=96x64:rate=10", 1)
    make_ffmpeg_clip(second, "smptebars=size=96x64:rate=10", 1)
    index_dir = tmp_path / "index"
    checkpoint = build_index(index_dir, tiny_model(), [first])
    older = (index_dir / CURRENT_FILE).read_text().strip()
    ingest(index_dir, checkpoint, [second])
    current = (index_dir / CURRENT_FILE).read_text().strip()
    assert current != older

    index_file = index_dir / SNAPSHOTS_DIR / current / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])

    with live_server(index_dir) as server, server.client() as client:
        ready = client.get("/readyz")
        response = client.post("/search", json={"query": "bars", "top_k": 10})
    assert ready.status_code == 200
    assert ready.json()["snapshot_id"] == older
    assert response.json()["index"]["snapshot_id"] == older
    assert [hit["path"] for hit in response.json()["results"]] == [str(first.resolve())]


@pytest.mark.parametrize("value", ["http://localhost:3000, https://a.example",
                                   '["http://localhost:3000", "https://a.example"]'])
def test_cors_origins_comma_or_json(small_index, monkeypatch, value):
    monkeypatch.setenv("PIG_CORS_ORIGINS", value)
    settings = ApiSettings(index_dir=small_index)
    assert settings.cors_origins == ["http://localhost:3000", "https://a.example"]


def test_cli_reports_one_line_per_setting(small_index):
    env = {**environment_without_pig(), "PIG_MAX_TOP_K": "many", "PIG_API_KEY": " "}
    result = subprocess.run(
        [str(VENV_BIN / "search-api"), "--index-dir", str(small_index), "--port", "99999"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert any("PIG_MAX_TOP_K 'many'" in line and "valid integer" in line for line in lines)
    assert any("PIG_PORT (--port) 99999" in line for line in lines)
    assert any("PIG_API_KEY" in line and "unset PIG_API_KEY" in line for line in lines)


def test_cli_missing_index_dir_reads_cleanly(tmp_path):
    missing = tmp_path / "absent"
    result = subprocess.run(
        [str(VENV_BIN / "search-api"), "--index-dir", str(missing)],
        env=environment_without_pig(), capture_output=True, text=True, timeout=120,
    )
    assert result.stderr.startswith(f"search-api: invalid PIG_INDEX_DIR (--index-dir) '{missing}'")
    assert "Value error" not in result.stderr


def test_cli_help_lists_every_setting():
    result = subprocess.run([str(VENV_BIN / "search-api"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for name in ApiSettings.model_fields:
        assert f"PIG_{name.upper()} (" in result.stdout, name


def test_uvicorn_settings_error_has_no_traceback(tmp_path):
    env = {**environment_without_pig(), "PIG_INDEX_DIR": str(tmp_path / "absent"),
           "PIG_CORS_ORIGINS": "http://localhost:3000"}
    result = subprocess.run(
        [str(VENV_BIN / "uvicorn"), "search_api.app:app", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"invalid PIG_INDEX_DIR '{tmp_path / 'absent'}'" in result.stderr
    assert "PIG_CORS_ORIGINS" not in result.stderr


def checkpoint_fingerprint(checkpoint: Path) -> str:
    return model_fingerprint(load_checkpoint(checkpoint, device="cpu"))


@pytest.mark.parametrize("launcher", ["search-api", "uvicorn"])
def test_checkpoint_mismatch_is_one_line(small_index, checkpoints, launcher):
    other = checkpoints[1]
    with Catalog(small_index / CATALOG_FILE, read_only=True) as catalog:
        index_fingerprint = catalog.model_fingerprint()
    other_fingerprint = checkpoint_fingerprint(other)
    assert index_fingerprint != other_fingerprint

    env = environment_without_pig()
    port = str(free_port())
    if launcher == "search-api":
        command = [str(VENV_BIN / "search-api"), "--index-dir", str(small_index),
                   "--checkpoint", str(other), "--device", "cpu", "--port", port]
    else:
        env.update(PIG_INDEX_DIR=str(small_index), PIG_CHECKPOINT=str(other), PIG_DEVICE="cpu")
        command = [str(VENV_BIN / "uvicorn"), "search_api.app:app", "--port", port]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if index_fingerprint in line]
    assert len(lines) == 1, result.stderr
    assert other_fingerprint in lines[0]
    assert "--checkpoint" in lines[0]
    assert "PIG_CHECKPOINT" in lines[0]
    assert str(small_index / "model") in lines[0]


def break_current_pointer(index_dir: Path) -> str:
    (index_dir / CURRENT_FILE).write_text("20000101T000000Z-missing\n")
    return "20000101T000000Z-missing"


def tear_only_snapshot(index_dir: Path) -> str:
    current = (index_dir / CURRENT_FILE).read_text().strip()
    index_file = index_dir / SNAPSHOTS_DIR / current / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])
    return "truncated or torn"


def garble_model_weights(index_dir: Path) -> str:
    (index_dir / MODEL_DIR / "model.safetensors").write_bytes(b"\xff" * 64)
    return "model.safetensors"


def garble_model_config(index_dir: Path) -> str:
    (index_dir / MODEL_DIR / "config.json").write_text("{not json")
    return "config.json is not valid JSON"


def request_cuda(index_dir: Path) -> str:
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA device")
    return "no CUDA device is visible"


@pytest.mark.parametrize(
    "damage",
    [break_current_pointer, tear_only_snapshot, garble_model_weights, garble_model_config,
     request_cuda],
)
def test_startup_failure_is_one_line(small_index, tmp_path, caplog, damage):
    index_dir = tmp_path / "index"
    shutil.copytree(small_index, index_dir)
    expected = damage(index_dir)
    device = "cuda" if damage is request_cuda else "cpu"
    settings = ApiSettings(index_dir=index_dir, device=device, torch_threads=1)
    # log_config=None lets uvicorn's records reach caplog, as under `search-api`.
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, lifespan="on",
                            log_config=None)
    server = uvicorn.Server(config)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_info:
        server.run()

    assert exit_info.value.code != 0
    assert not server.started
    assert "Traceback" not in caplog.text
    failures = [record.getMessage() for record in caplog.records
                if record.name == "uvicorn.error" and record.levelno >= logging.ERROR]
    assert failures[-1] == "Application startup failed. Exiting.", failures
    message = failures[0]
    assert expected in message
    if damage is request_cuda:
        assert "--device (PIG_DEVICE) cuda" in message
    else:
        assert str(index_dir) in message
    assert "\n" not in message
