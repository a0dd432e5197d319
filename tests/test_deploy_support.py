"""Readers of the deployment files for the deployment tests: compose, Dockerfiles, .dockerignore.

This module contains no tests. No Docker engine runs where the suite runs, so these helpers read
the files the way Docker and Docker Compose do, for the parts the tests check: variable
interpolation, Dockerfile instructions per build stage and ``.dockerignore`` matching.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
# Compose Specification JSON schema; tests/data/compose-spec.schema.SOURCE.md records where
# the copy comes from.
COMPOSE_SCHEMA = REPO_ROOT / "tests" / "data" / "compose-spec.schema.json"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, $NAME and the
# escape $$, as in the Compose Specification's interpolation section.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def load_compose() -> dict[str, Any]:
    """Return docker-compose.yml as YAML data, anchors and merge keys resolved, not interpolated."""
    with COMPOSE_FILE.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def interpolation_names(value: Any) -> set[str]:
    """Return the names of the variables that a compose value interpolates, recursively."""
    if isinstance(value, str):
        return {
            match.group("braced") or match.group("named")
            for match in _INTERPOLATION.finditer(value)
            if not match.group("escaped")
        }
    if isinstance(value, dict):
        names: set[str] = set()
        for key, item in value.items():
            names |= interpolation_names(key) | interpolation_names(item)
        return names
    if isinstance(value, list):
        return set().union(*(interpolation_names(item) for item in value)) if value else set()
    return set()


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Substitute compose variables in a value, recursively, as Docker Compose does."""
    if isinstance(value, dict):
        return {interpolate(key, variables): interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        operator = match.group("operator")
        argument = match.group("argument") or ""
        current = variables.get(name)
        is_set = current is not None
        is_nonempty = bool(current)
        if operator in (":-", "-"):
            use_default = not is_nonempty if operator == ":-" else not is_set
            return interpolate(argument, variables) if use_default else current
        if operator in (":?", "?"):
            missing = not is_nonempty if operator == ":?" else not is_set
            if missing:
                raise ValueError(f"compose variable {name} is required: {argument}")
            return current
        if operator in (":+", "+"):
            use_alternative = is_nonempty if operator == ":+" else is_set
            return interpolate(argument, variables) if use_alternative else ""
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """Read a compose env file: the assignments, and the names in commented-out assignments."""
    assigned: dict[str, str] = {}
    commented: set[str] = set()
    assignment = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")
    for line in path.read_text(encoding="utf-8").splitlines():
        match = assignment.match(line.strip())
        if match is None:
            continue
        if match.group("comment"):
            commented.add(match.group("name"))
        else:
            assigned[match.group("name")] = match.group("value")
    return assigned, commented


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's ``environment`` as a mapping, whichever of the two forms it uses."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {pair[0]: pair[1] if len(pair) == 2 else "" for pair in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def settings_env_names(settings_class: type) -> set[str]:
    """Return the environment variable names a pydantic-settings class reads."""
    config = settings_class.model_config
    prefix = config.get("env_prefix", "")
    names = set()
    for name, info in settings_class.model_fields.items():
        names.add((prefix + (info.alias or name)).upper())
    return names


def console_scripts() -> dict[str, str]:
    """Return the console scripts that pyproject.toml declares, name to entry point."""
    with (REPO_ROOT / "pyproject.toml").open("rb") as stream:
        return tomllib.load(stream)["project"]["scripts"]


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Split a Dockerfile into build stages of instructions, joining continued lines.

    Handles comments, the backslash line continuation and ``ARG`` defaults before the first
    ``FROM``; heredocs and the ``escape`` parser directive are not supported.
    """
    instructions: list[Instruction] = []
    pending = ""
    start_line = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction.
        if not pending:
            start_line = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start_line))
    if pending:
        raise ValueError(f"{path}: the last instruction ends with a line continuation")

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            words = [word for word in words if not word.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{path}:{instruction.line}: only ARG may come before FROM")
            arg_name, _, default = instruction.arguments.partition("=")
            global_args[arg_name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path=path, global_args=global_args, stages=stages)


def exec_form(arguments: str) -> list[str]:
    """Return the argument list of an exec-form (JSON array) or shell-form instruction."""
    text = arguments.strip()
    if text.startswith("["):
        return json.loads(text)
    return ["/bin/sh", "-c", text]


def copy_sources(instruction: Instruction) -> list[str]:
    """Return the build-context sources of a COPY or ADD, or nothing for ``--from`` copies."""
    words = shlex.split(instruction.arguments)
    options = [word for word in words if word.startswith("--")]
    if any(option.startswith("--from=") for option in options):
        return []
    paths = [word for word in words if not word.startswith("--")]
    if instruction.arguments.lstrip().startswith("["):
        paths = json.loads(instruction.arguments)
    return paths[:-1]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Translate one .dockerignore pattern (Go filepath.Match plus ``**``) to a regex."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            parts.append(".*")
            index += 2
            continue
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[":
            end = pattern.index("]", index)
            body = pattern[index + 1 : end].replace("^", "\\^", 1)
            if body.startswith("!"):
                body = "^" + body[1:]
            parts.append(f"[{body}]")
            index = end
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts) + r"\Z")


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """Return the (is_exception, regex) rules of a .dockerignore file, in file order."""
    rules = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        is_exception = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip().lstrip("/")
        pattern = str(Path(pattern)) if pattern else pattern
        rules.append((is_exception, _dockerignore_regex(pattern)))
    return rules


def is_ignored(relative_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Return True when .dockerignore keeps a context path out of the build context.

    As in Docker, the last matching rule wins, and a rule that matches a parent directory
    matches everything under it.
    """
    parts = Path(relative_path).parts
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    ignored = False
    for is_exception, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not is_exception
    return ignored
