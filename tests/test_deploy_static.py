"""Static checks of the Docker deployment: compose file, Dockerfiles, .dockerignore, .env.example.

No Docker engine runs here, so these tests read the files. test_deploy_run.py runs the
containers' entry commands directly against a temporary index.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from indexer.settings import IndexerSettings
from search_api.settings import ApiSettings
from test_deploy_support import (
    COMPOSE_SCHEMA,
    ENV_EXAMPLE,
    REPO_ROOT,
    console_scripts,
    copy_sources,
    exec_form,
    interpolate,
    interpolation_names,
    is_ignored,
    load_compose,
    parse_dockerfile,
    read_dockerignore,
    read_env_file,
    service_environment,
    settings_env_names,
)

DOCKERFILES = sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))
SETTINGS_BY_IMAGE = {"api.Dockerfile": ApiSettings, "indexer.Dockerfile": IndexerSettings}
SETTINGS_BY_SERVICE = {"api": ApiSettings, "indexer": IndexerSettings, "indexer-cpu": IndexerSettings}
# Variables that libraries inside the containers read: huggingface_hub, which open_clip
# downloads pretrained weights through.
LIBRARY_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE"}
INDEX_TARGET = "/data/index"


def compose_with_defaults() -> dict:
    """Return the compose file interpolated with every variable unset, i.e. the defaults."""
    return interpolate(load_compose(), {})


def volume_targets(service: dict) -> dict[str, dict]:
    """Return a service's volumes by container path, each in the long syntax."""
    volumes = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            volume = {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
        volumes[volume["target"]] = volume
    return volumes


def test_dockerfiles_found():
    assert [path.name for path in DOCKERFILES] == ["api.Dockerfile", "indexer.Dockerfile"]


def test_compose_matches_spec_schema():
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)

    validator.validate(load_compose())
    validator.validate(compose_with_defaults())


def test_compose_schema_rejects_invalid_file():
    # Guards against a schema copy so loose that it accepts anything.
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    compose = load_compose()
    compose["services"]["api"]["restart"] = ["always"]

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(compose)


def test_compose_build_files_exist():
    compose = compose_with_defaults()

    for name, service in compose["services"].items():
        build = service["build"]
        context = REPO_ROOT / build["context"]
        assert context.is_dir(), f"service {name}: build context {context} is missing"
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"service {name}: Dockerfile {dockerfile} is missing"
        for env_file in service.get("env_file", []):
            if isinstance(env_file, str):
                env_file = {"path": env_file, "required": True}
            if env_file.get("required", True):
                path = REPO_ROOT / env_file["path"]
                assert path.is_file(), f"service {name}: required env_file {path} is missing"


def test_compose_bind_sources_exist():
    # A bind mount either declares that Docker may create its host folder (user data such as
    # the video folder) or must point at a path that exists in the repository.
    compose = compose_with_defaults()

    for name, service in compose["services"].items():
        for target, volume in volume_targets(service).items():
            if volume["type"] != "bind":
                continue
            if volume.get("bind", {}).get("create_host_path", False):
                continue
            source = REPO_ROOT / volume["source"]
            assert source.exists(), f"service {name}: bind source {source} for {target} is missing"


def test_compose_named_volumes_declared():
    compose = compose_with_defaults()
    declared = set(compose.get("volumes") or {})

    for name, service in compose["services"].items():
        for target, volume in volume_targets(service).items():
            if volume["type"] == "volume":
                assert volume["source"] in declared, f"service {name}: volume for {target}"


def test_compose_services_share_index_volume():
    services = compose_with_defaults()["services"]

    sources = {name: volume_targets(service)[INDEX_TARGET]["source"] for name, service in services.items()}
    assert set(sources.values()) == {"index"}
    for name, service in services.items():
        assert service_environment(service)["PIG_INDEX_DIR"] == INDEX_TARGET, name


def test_compose_api_service():
    api = compose_with_defaults()["services"]["api"]

    assert "profiles" not in api, "the api must start with a plain `docker compose up`"
    assert api["restart"] == "unless-stopped"
    assert api["deploy"]["resources"]["limits"]["memory"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert service_environment(api)["PIG_PORT"] == "8000"
    assert api["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_compose_indexer_services():
    services = compose_with_defaults()["services"]
    gpu, cpu = services["indexer"], services["indexer-cpu"]

    assert gpu["profiles"] == ["indexer"]
    assert cpu["profiles"] == ["indexer-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "reservations" not in cpu["deploy"]["resources"]
    assert service_environment(cpu)["PIG_DEVICE"] == "cpu"
    assert gpu["image"] == cpu["image"]
    for service in (gpu, cpu):
        volumes = volume_targets(service)
        assert volumes["/videos"]["read_only"] is True
        assert volumes["/cache"]["source"] == "model-cache"
        assert service_environment(service)["HF_HOME"].startswith("/cache/")
        assert service["command"] == ["ingest", "/videos"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copy_sources_exist(dockerfile: Path):
    rules = read_dockerignore()
    copies = [item for stage in parse_dockerfile(dockerfile).stages for item in stage.all("COPY")]
    assert copies, f"{dockerfile.name} copies nothing from the build context"

    for instruction in copies:
        for source in copy_sources(instruction):
            where = f"{dockerfile.name}:{instruction.line}"
            assert (REPO_ROOT / source).exists(), f"{where}: COPY source {source} is missing"
            assert not is_ignored(source, rules), f"{where}: .dockerignore excludes {source}"


def test_dockerignore_keeps_package_files():
    # Every file the package installs must reach the build context: the Python modules of the
    # copied packages and the package data that pyproject.toml declares.
    rules = read_dockerignore()
    copied = {source for dockerfile in DOCKERFILES for stage in parse_dockerfile(dockerfile).stages
              for item in stage.all("COPY") for source in copy_sources(item)}

    needed = [Path("pyproject.toml"), Path("README.md")]
    for package in ("shared", "indexer", "search_api", "training"):
        assert package in copied, f"no Dockerfile copies the package folder {package}"
        needed += [path.relative_to(REPO_ROOT) for path in (REPO_ROOT / package).rglob("*.py")
                   if "__pycache__" not in path.parts]
    needed += [path.relative_to(REPO_ROOT) for path in (REPO_ROOT / "shared/model/configs").glob("*.json")]
    for path in needed:
        assert not is_ignored(str(path), rules), f".dockerignore excludes {path}"


def test_dockerignore_excludes_local_state():
    rules = read_dockerignore()

    for path in (".venv/bin/python", ".git/HEAD", ".env", "tests/test_model.py",
                 "shared/__pycache__/device.cpython-311.pyc", "checkpoints/demo/model.safetensors",
                 "demo-data/index/catalog.sqlite", "videos/clip.mp4"):
        assert is_ignored(path, rules), f".dockerignore lets {path} into the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_entrypoint_is_console_script(dockerfile: Path):
    final = parse_dockerfile(dockerfile).final
    entrypoints = final.all("ENTRYPOINT")

    assert len(entrypoints) == 1, f"{dockerfile.name}: expected one ENTRYPOINT in the final stage"
    command = exec_form(entrypoints[0].arguments)
    assert command[0] in console_scripts(), f"{dockerfile.name}: {command[0]} is not declared"
    assert entrypoints[0].arguments.lstrip().startswith("["), "use the exec form"


def test_compose_commands_use_console_scripts():
    services = compose_with_defaults()["services"]
    entrypoints = {path.name: exec_form(parse_dockerfile(path).final.all("ENTRYPOINT")[0].arguments)
                   for path in DOCKERFILES}

    for name, service in services.items():
        image_entrypoint = entrypoints[Path(service["build"]["dockerfile"]).name]
        entrypoint = service.get("entrypoint", image_entrypoint)
        assert entrypoint[0] in console_scripts(), f"service {name}: {entrypoint[0]}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_bases_pinned(dockerfile: Path):
    parsed = parse_dockerfile(dockerfile)
    stage_names = {stage.name for stage in parsed.stages if stage.name}

    assert len(parsed.stages) >= 2, f"{dockerfile.name} is not a multi-stage build"
    for stage in parsed.stages:
        base = interpolate(stage.base, parsed.global_args)
        if base in stage_names:
            continue
        image, _, tag = base.rpartition(":")
        assert image, f"{dockerfile.name}: base {base} has no tag"
        assert tag != "latest", f"{dockerfile.name}: base {base} is not pinned"
        assert any(char.isdigit() for char in tag), f"{dockerfile.name}: tag {tag} names no version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_as_non_root(dockerfile: Path):
    final = parse_dockerfile(dockerfile).final
    users = final.all("USER")
    stage_args = dict(item.arguments.split("=", 1) for item in final.all("ARG") if "=" in item.arguments)

    assert users, f"{dockerfile.name}: the final stage sets no USER"
    user = interpolate(users[-1].arguments, stage_args).split(":")[0]
    assert user not in ("", "root", "0"), f"{dockerfile.name}: runs as {user!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_has_healthcheck(dockerfile: Path):
    checks = parse_dockerfile(dockerfile).final.all("HEALTHCHECK")

    assert len(checks) == 1
    assert " CMD " in f" {checks[0].arguments} "


def test_api_healthcheck_script_copied():
    final = parse_dockerfile(REPO_ROOT / "docker/api.Dockerfile").final
    compose_test = compose_with_defaults()["services"]["api"]["healthcheck"]["test"]
    copied = {tuple(copy_sources(item)): item.arguments.split()[-1] for item in final.all("COPY")}

    script_in_image = copied[("docker/healthcheck.py",)]
    assert compose_test[-1] == script_in_image
    assert script_in_image in final.all("HEALTHCHECK")[0].arguments


def test_healthcheck_fails_without_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        # Bound but not listening, so connections to it are refused.
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "docker/healthcheck.py")],
            env={"PIG_PORT": str(port)},
            capture_output=True,
            text=True,
            check=False,
        )

    assert result.returncode == 1
    assert "unreachable" in result.stderr


@pytest.mark.parametrize("service_name", sorted(SETTINGS_BY_SERVICE))
def test_compose_environment_names_are_settings(service_name: str):
    service = compose_with_defaults()["services"][service_name]
    known = settings_env_names(SETTINGS_BY_SERVICE[service_name])

    for name in service_environment(service):
        if name.startswith("PIG_"):
            assert name in known, f"service {service_name}: {name} is no setting"
        else:
            assert name in LIBRARY_VARIABLES, f"service {service_name}: unexpected variable {name}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_environment_names_are_settings(dockerfile: Path):
    known = settings_env_names(SETTINGS_BY_IMAGE[dockerfile.name])
    names = []
    for instruction in parse_dockerfile(dockerfile).final.all("ENV"):
        names += [word.split("=", 1)[0] for word in instruction.arguments.split() if "=" in word]

    pig_names = [name for name in names if name.startswith("PIG_")]
    assert "PIG_INDEX_DIR" in pig_names
    for name in pig_names:
        assert name in known, f"{dockerfile.name}: {name} is no setting"


def test_settings_env_names_derived():
    # The name derivation itself, checked on fields that the deployment relies on.
    assert {"PIG_INDEX_DIR", "PIG_API_KEY", "PIG_PORT"} <= settings_env_names(ApiSettings)
    assert {"PIG_INDEX_DIR", "PIG_CHECKPOINT", "PIG_WORKERS"} <= settings_env_names(IndexerSettings)
    assert "PIG_WORKERS" not in settings_env_names(ApiSettings)


def test_env_example_names_are_used():
    assigned, commented = read_env_file(ENV_EXAMPLE)
    settings = settings_env_names(ApiSettings) | settings_env_names(IndexerSettings)
    interpolated = interpolation_names(load_compose())

    for name in set(assigned) | commented:
        if name.startswith("PIG_"):
            assert name in settings, f".env.example: {name} is no setting"
        else:
            assert name in interpolated | LIBRARY_VARIABLES, f".env.example: {name} is unused"


def test_compose_variables_documented():
    assigned, commented = read_env_file(ENV_EXAMPLE)

    for name in interpolation_names(load_compose()):
        assert name in set(assigned) | commented, f"{name} is missing from .env.example"


def test_env_example_defaults_match_compose():
    # Copying .env.example to .env unchanged gives the same file as no .env at all.
    assigned, _ = read_env_file(ENV_EXAMPLE)

    assert interpolate(load_compose(), assigned) == compose_with_defaults()


def test_env_example_indexer_settings_valid(monkeypatch: pytest.MonkeyPatch):
    # The indexer container's environment: .env.example as the env_file, then the service's
    # own environment, which wins. The search service's settings check that the index exists,
    # so test_deploy_run.py covers them against a real index.
    assigned, _ = read_env_file(ENV_EXAMPLE)
    for name in settings_env_names(IndexerSettings):
        monkeypatch.delenv(name, raising=False)
    for service_name in ("indexer", "indexer-cpu"):
        service = compose_with_defaults()["services"][service_name]
        for name, value in {**assigned, **service_environment(service)}.items():
            monkeypatch.setenv(name, value)

        settings = IndexerSettings()

        assert settings.index_dir == Path(INDEX_TARGET)
        assert settings.checkpoint == Path(assigned["PIG_CHECKPOINT"])
        assert settings.model is None
